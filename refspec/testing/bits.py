"""Bitwise comparison of arrays, with a report of where and by how much they differ."""
from __future__ import annotations

import numpy as np

_SIGNED = {2: np.int16, 4: np.int32, 8: np.int64}


def ulp_distance(a, b) -> np.ndarray:
    """Elementwise distance in units in the last place between two float arrays of one dtype (float16, 32 or
    64): how many representable values lie between them; +0.0 and -0.0 count as one value. For integer
    arrays, the absolute difference. int64 (object for float64 distances beyond int64)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iub":
        return np.abs(a.astype(np.int64) - b.astype(np.int64))
    signed = _SIGNED[a.dtype.itemsize]
    magnitude = np.iinfo(signed).max

    def ordered(x):
        i = x.view(signed).astype(np.int64)
        return np.where(i < 0, -(i & magnitude), i)

    return np.abs(ordered(a) - ordered(b))


def bits_equal_mask(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Elementwise: same bits, or both NaN (NaN payloads are unspecified, refspec/SPEC.md)."""
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.dtype.itemsize]
    same = actual.view(view) == expected.view(view)
    if actual.dtype.kind == "f":
        same |= np.isnan(actual) & np.isnan(expected)
    return same


def first_difference(actual, expected, what: str = "arrays") -> str | None:
    """None when the arrays are bitwise equal; else one line: how many elements differ, the first index,
    both values and their ULP distance. Shapes and dtypes must match too."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.dtype != expected.dtype:
        return f"{what}: dtype {actual.dtype} != {expected.dtype}"
    same = bits_equal_mask(actual, expected)
    if same.all():
        return None
    idx = tuple(int(i) for i in np.argwhere(~same)[0])
    ulp = int(ulp_distance(actual[idx], expected[idx]))
    return (f"{what}: {int(np.count_nonzero(~same))} of {actual.size} elements differ; first at {idx}: "
            f"{actual[idx]!s} != {expected[idx]!s} ({ulp} ULP)")  # str: the shortest repr of its dtype


def assert_bits_equal(actual, expected, what: str = "arrays") -> None:
    """AssertionError (first differing index, both values, ULP distance) unless the bits are equal."""
    message = first_difference(actual, expected, what)
    if message is not None:
        raise AssertionError(message)
