"""Bitwise comparison with a useful failure message (first differing index, both values, ULP distance)."""
from __future__ import annotations

import numpy as np


def ulp_distance(a: np.float32, b: np.float32) -> int:
    """Distance in units of the last place between two binary32 values (sign-magnitude order)."""

    def ordered(x):
        i = int(np.asarray(x, np.float32).view(np.int32))
        return i if i >= 0 else -(i & 0x7FFFFFFF)

    return abs(ordered(a) - ordered(b))


def assert_bits_equal(actual, expected, what: str = "arrays") -> None:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    view = {4: np.uint32, 2: np.uint16, 1: np.uint8, 8: np.uint64}[actual.dtype.itemsize]
    a, e = actual.view(view), expected.view(view)
    if np.array_equal(a, e):
        return
    diff = np.argwhere(a != e)
    idx = tuple(int(i) for i in diff[0])
    msg = f"{what}: {len(diff)} of {a.size} elements differ; first at {idx}: {actual[idx]!r} != {expected[idx]!r}"
    if actual.dtype == np.float32:
        msg += f" ({ulp_distance(actual[idx], expected[idx])} ULP)"
    raise AssertionError(msg)
