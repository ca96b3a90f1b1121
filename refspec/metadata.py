"""Typed reading of GGUF metadata: every key refspec reads goes through a ``MetadataReader``, which checks
the key's GGUF type and range before the value is used. A model file is untrusted input, and Python's duck
typing would otherwise let the string "false" switch a flag on, NaN floats pass for token types or a scalar
stand in for an array.

Values are the plain Python values ``refspec.gguf_model`` gives them, in which the GGUF type is the Python
type: BOOL -> bool, the eight integer types -> int, FLOAT32/FLOAT64 -> float, STRING -> str, ARRAY -> a list
of one of these. A dict built by hand (a test, a caller) is read the same way.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from refspec.errors import ModelFileError, RefspecError, UsageError

REQUIRED = object()  # default= for a key that must be present


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe(value) -> str:
    """The GGUF type a plain value stands for, for messages ('BOOL', 'an integer', 'an array of strings')."""
    if isinstance(value, bool):
        return "BOOL"
    if _is_int(value):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        kinds = {describe(item) for item in value[:1000]}
        if not kinds:
            return "an empty array"
        if len(kinds) > 1:
            return "an array of mixed types"
        kind = kinds.pop()
        return "an array of " + {"BOOL": "BOOLs", "an integer": "integers", "a float": "floats",
                                 "a string": "strings"}.get(kind, "arrays")
    return type(value).__name__


class MetadataReader:
    """Reads keys of ``metadata`` with their types checked. Failures raise ``error`` (a RefspecError type)
    with ``where`` (for example the file name and ': ') in front. ``read_keys`` records every key asked for,
    present or not, so that a loader can refuse keys nobody read (``unread``)."""

    def __init__(self, metadata: Mapping, *, error: type[RefspecError] = ModelFileError, where: str = ""):
        if not isinstance(metadata, Mapping):
            raise UsageError(f"metadata must be a mapping of GGUF keys to values, not {type(metadata).__name__}")
        self.metadata, self.error, self.where = metadata, error, where
        self.read_keys: set[str] = set()

    def fail(self, message: str) -> RefspecError:
        return self.error(f"{self.where}{message}")

    def _get(self, key: str, default):
        self.read_keys.add(key)
        value = self.metadata.get(key)
        if value is None and default is REQUIRED:
            raise self.fail(f"metadata key {key} is missing")
        return value

    def _wrong(self, key: str, value, expected: str) -> RefspecError:
        return self.fail(f"metadata {key} is {describe(value)}, expected {expected}")

    # ---- scalars
    def boolean(self, key: str, default=REQUIRED) -> bool:
        value = self._get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, value, "BOOL")
        return value

    def integer(self, key: str, default=REQUIRED, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self._get(key, default)
        if value is None:
            return default
        if not _is_int(value):
            raise self._wrong(key, value, "an integer")
        self._check_range(key, value, lo, hi)
        return value

    def number(self, key: str, default=REQUIRED, *, positive: bool = False) -> float:
        """A finite float (integer types are accepted too, as llama.cpp converts them)."""
        value = self._get(key, default)
        if value is None:
            return default
        if not _is_number(value):
            raise self._wrong(key, value, "a number")
        value = float(value)
        if not math.isfinite(value) or (positive and value <= 0):
            raise self.fail(f"metadata {key} is {value}, must be finite{' and positive' if positive else ''}")
        return value

    def string(self, key: str, default=REQUIRED) -> str:
        value = self._get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._wrong(key, value, "a string")
        return value

    def token_id(self, key: str, n_vocab: int) -> int | None:
        """An optional token id, which must be in 0..n_vocab-1."""
        value = self._get(key, None)
        if value is None:
            return None
        if not _is_int(value):
            raise self._wrong(key, value, "an integer token id")
        if not 0 <= value < n_vocab:
            raise self.fail(f"metadata {key} = {value} is outside the vocabulary of {n_vocab} tokens")
        return value

    # ---- arrays
    def strings(self, key: str, default=REQUIRED, *, length: int | None = None) -> list[str]:
        return self._array(key, default, length, lambda item: isinstance(item, str), "strings")

    def integers(self, key: str, default=REQUIRED, *, length: int | None = None, lo: int | None = None,
                 hi: int | None = None) -> list[int]:
        values = self._array(key, default, length, _is_int, "integers")
        if values is not default and values and (lo is not None or hi is not None):
            self._check_range(f"{key} item", min(values), lo, hi)
            self._check_range(f"{key} item", max(values), lo, hi)
        return values

    def flags(self, key: str, default=REQUIRED, *, length: int | None = None) -> list[bool]:
        """An array of BOOLs, or of the integers 0 and 1 (writers use either), as bools."""
        values = self._array(key, default, length, lambda item: item in (0, 1), "flags (BOOL, 0 or 1)")
        return values if values is default else [bool(v) for v in values]

    def numbers(self, key: str, default=REQUIRED, *, length: int | None = None) -> list[float]:
        """Finite numbers (integers accepted), as floats."""
        values = self._array(key, default, length, _is_number, "numbers")
        if values is default:
            return values
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            raise self.fail(f"metadata {key} holds non-finite values")
        return values

    def _array(self, key, default, length, ok, kind):
        value = self._get(key, default)
        if value is None:
            return default
        if not isinstance(value, (list, tuple)) or not all(ok(item) for item in value):
            raise self._wrong(key, value, f"an array of {kind}")
        if length is not None and len(value) != length:
            raise self.fail(f"metadata {key} has {len(value)} items, expected {length}")
        return list(value)

    def _check_range(self, key: str, value: int, lo: int | None, hi: int | None) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
            raise self.fail(f"metadata {key} is {value}, not in {bounds}")

    def unread(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` that are present but that no one has read."""
        return sorted(key for key in self.metadata if key.startswith(prefix) and key not in self.read_keys)
