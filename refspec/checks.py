"""Argument checks for refspec's public functions: a wrong argument is a UsageError naming it, never a
TypeError or IndexError from deep inside NumPy, and never a value Python quietly converts (a float token id
truncated, a negative position indexing from the end, a bool taken for 1)."""
from __future__ import annotations

import numbers
import operator
import os
import shutil
import stat
from collections.abc import Iterable, Mapping, Set

from refspec.errors import OutputError, UsageError


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: a Python or NumPy integer (not a bool, not a float), within lo..hi."""
    if isinstance(value, bool):
        raise UsageError(f"{name} must be an integer, not a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise UsageError(f"{name} must be an integer, not {type(value).__name__} {_short(value)}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"at least {lo}" if hi is None else f"at most {hi}" if lo is None else f"in {lo}..{hi}"
        raise UsageError(f"{name} is {value}, must be {bounds}")
    return value


def real(name: str, value) -> float:
    """``value`` as a float: a Python or NumPy real number (an int or a float; not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} must be a real number, not {type(value).__name__} {_short(value)}")
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        raise UsageError(f"{name} is {_short(value)}, too large for a float") from None


def token_ids(name: str, ids, n_vocab: int, *, allow_empty: bool = False, ordered: bool = False) -> list[int]:
    """A sequence of token ids, each an integer in 0..n_vocab-1: a list, a tuple, a range, a 1-D NumPy array,
    an iterator. `ordered`: the order means something (a prompt, a pass's ids), so a container without one (a
    set, a frozenset, a dict, a dict's keys) is refused rather than read in whatever order it iterates; a set
    of end-of-generation ids is checked without it."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise UsageError(f"{name} must be a sequence of token ids, not {type(ids).__name__}")
    if ordered and isinstance(ids, (Set, Mapping)):
        why = "iterating it gives its keys" if isinstance(ids, Mapping) else "its order is arbitrary"
        raise UsageError(f"{name} must be a sequence of token ids in order (a list, a tuple, a 1-D array), not a "
                         f"{type(ids).__name__}: {why}")
    if getattr(ids, "ndim", 1) != 1:  # a NumPy array (or a tensor) of another rank: not a sequence of ids
        raise UsageError(f"{name} must be a 1-D sequence of token ids, not a {type(ids).__name__} of "
                         f"{ids.ndim} dimensions (shape {tuple(getattr(ids, 'shape', ()))})")
    checked = []
    for i, token in enumerate(ids):
        if type(token) is int and 0 <= token < n_vocab:  # the common case, without a message built per token
            checked.append(token)
            continue
        try:
            checked.append(integer(f"{name}[{i}]", token, 0, n_vocab - 1))
        except UsageError as error:
            raise UsageError(f"token ids must be integers in 0..{n_vocab - 1}: {error}") from None
    if not checked and not allow_empty:
        raise UsageError(f"token ids: {name} is empty; give at least one")
    return checked


def layer_subset(layers, n_layer: int) -> list[int]:
    """A non-empty, increasing list of layer indices in 0..n_layer-1 (a drafter's subset of the layers)."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise UsageError(f"layers must be a sequence of layer indices, not {type(layers).__name__}")
    checked = [integer(f"layers[{i}]", layer, 0, n_layer - 1) for i, layer in enumerate(layers)]
    if not checked or any(a >= b for a, b in zip(checked, checked[1:])):
        raise UsageError(f"layers must be a non-empty increasing subset of 0..{n_layer - 1}, got {checked[:8]}")
    return checked


def n_predict(value) -> int:
    """Tokens to generate: a positive count, or -1 for 'until end of generation or a full context'."""
    value = integer("n_predict", value)
    if value < 1 and value != -1:
        raise UsageError(f"n_predict is {value}: give a positive number of tokens, or -1 for 'until end of "
                         "generation'")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, not {type(value).__name__} {_short(value)}")
    return value


def callback(name: str, value) -> None:
    if value is not None and not callable(value):
        raise UsageError(f"{name} must be callable or None, not {type(value).__name__}")


def output_file(path, flag: str | None = None, *, renamed: bool = False) -> None:
    """A file refspec will write (`flag`: the option that named it), checked before the work that fills it, so that
    minutes of work do not end in an error: not a directory, in a directory that exists, and, where it is written as
    a finished temporary file `renamed` onto it, not an existing device or FIFO (the rename would replace it)."""
    name = f"{flag} {path}" if flag else f"{path}"
    if os.path.isdir(path):
        raise UsageError(f"cannot write {name}: it is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {name}: " + (f"{parent} is not a directory" if os.path.exists(parent)
                                                     else "its directory does not exist"))
    existing_special = os.path.exists(path) and not os.path.isfile(path)  # a device, a FIFO: /dev/stdout
    if renamed and existing_special:
        raise UsageError(f"cannot write {name}: it exists and is not a regular file")
    if not existing_special:
        room(path, flag=flag)


def write_json(path, value, flag: str | None = None, *, indent: int = 2) -> None:
    """Write `value` as JSON (and a newline) to `path`; OutputError naming the file where the system refuses (a full
    disk: `--json-out /dev/full`), not the system's words alone."""
    import json

    try:
        with open(path, "w") as f:
            json.dump(value, f, indent=indent)
            f.write("\n")
    except OSError as err:
        name = f"{flag} {path}" if flag else f"{path}"
        raise OutputError(f"cannot write {name}: {err.strerror or err}") from err


def room(path, nbytes: int = 0, what: str = "the file", *, flag: str | None = None) -> None:
    """OutputError, before anything is written, where the file system of `path`'s directory holds no files at
    all (/proc, /sys: a write there fails only at the end, with the writer's own words) or has less free room
    than the `nbytes` that `what` takes (a request of terabytes would otherwise write until the disk is full)."""
    name = f"{flag} {path}" if flag else f"{path}"
    parent = os.path.dirname(os.path.abspath(path))
    try:
        usage = shutil.disk_usage(parent)
    except OSError:
        return  # (a missing directory fails at the write, with its own message)
    if usage.total == 0:
        raise OutputError(f"cannot write {name}: {os.path.realpath(parent)} is on a file system that holds no "
                          "files")
    if nbytes > usage.free:
        raise OutputError(f"cannot write {name}: {what} takes {nbytes / 1e9:.1f} GB and its file system has "
                          f"{usage.free / 1e9:.1f} GB free")


def same_file(a, b) -> bool:
    """Whether the paths `a` and `b` name one file: the same path once links are resolved, or (where both exist)
    the same file by device and inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet), or cannot be looked at
        return False


def path_name(path, what: str) -> str:
    """``path`` (`what`: "model path", ...) as a str, checked for what cannot name a file: UsageError rather
    than TypeError or ValueError from the OS layer."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"a {what} must be a str or os.PathLike, not {type(path).__name__}")
    name = os.fspath(path)
    if not isinstance(name, str):
        raise UsageError(f"a {what} must be text, not {type(name).__name__}")
    if not name:
        raise UsageError(f"the {what} is empty")
    if "\0" in name:
        raise UsageError(f"the {what} {name!r} contains a NUL character")
    return name


def open_regular_file(name: str, kind: str, error: type[Exception]):
    """Opens ``name`` for reading without ever blocking (O_NONBLOCK: opening a FIFO would wait for a writer,
    inside a library that no signal interrupts) and refuses anything but a regular file: a directory, a FIFO or
    a device is not a `kind` ("model file", "golden file"). `error`: the exception to raise, one line."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise error(f"{name}: cannot read the {kind} ({e.strerror or e})") from e
    mode = stat.S_IFMT(os.fstat(fd).st_mode)
    if mode != stat.S_IFREG:
        os.close(fd)
        what = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(mode, "not a regular file")
        raise error(f"{name}: is {what}, not a {kind}")
    return os.fdopen(fd, "rb")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
