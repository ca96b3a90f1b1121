"""What the command line's prompt options hold, as text or token ids: -p TEXT, -p - (standard input), -f FILE,
--ids, and -e's escapes as llama.cpp processes them. Each failure is a UsageError of one line."""
from __future__ import annotations

import re
import sys

from refspec.errors import UsageError

MAX_PROMPT_BYTES = 64 << 20  # a prompt file or stdin larger than this is refused, not read


def prompt_text(args, *, whole_file: bool = False) -> str | None:
    """The prompt from -p TEXT, -p - (standard input) or -f FILE, as text; None for --ids or no prompt. A file
    loses its last newline, as llama-cli reads -f, unless whole_file (llama-tokenize reads it whole)."""
    if args.file is not None:
        return read_text_file(args.file, "the prompt file", whole=whole_file)
    if args.prompt == "-":
        return decode_prompt(sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1), "the prompt on standard input")
    return args.prompt  # None without -p


def read_text_file(path: str, what: str, *, whole: bool = False) -> str:
    """A UTF-8 text file of at most MAX_PROMPT_BYTES (`what`: "the prompt file", ... for messages), without
    its last newline, as llama.cpp reads -f and -sysf (an editor ends a file with one), unless `whole`."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROMPT_BYTES + 1)
    except OSError as e:
        _usage(f"cannot read {what} {path}: {e.strerror or e}")
    text = decode_prompt(raw, f"{what} {path}")
    return text[:-1] if text.endswith("\n") and not whole else text


def decode_prompt(raw: bytes, what: str) -> str:
    if len(raw) > MAX_PROMPT_BYTES:
        _usage(f"{what} is larger than {MAX_PROMPT_BYTES >> 20} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _usage(f"{what} is not UTF-8 text (byte {e.start})")


def parse_ids(text: str, n_vocab: int) -> list[int]:
    """Token ids written as '1,2,3', '1 2 3' or a JSON list [1, 2, 3]; each must be in 0..n_vocab-1."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()  # one flat list: a bracket inside is refused below as not an integer
    if not text:
        _usage("no token ids given")
    parts = re.split(r"\s*,\s*|\s+", text)
    if not any(parts):
        _usage("no token ids given")
    if "" in parts:
        _usage("an empty token id between commas (write ids as 1,2,3 or 1 2 3)")
    ids = []
    for part in parts:
        try:
            token_id = int(part)
        except ValueError:
            _usage(f"token id {part[:20]!r} is not an integer")
        if not 0 <= token_id < n_vocab:
            _usage(f"token id {token_id} is outside the vocabulary (0..{n_vocab - 1})")
        ids.append(token_id)
    return ids


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'", ord('"'): b'"', ord("\\"): b"\\"}
_HEX = b"0123456789abcdefABCDEF"


def _hex_escape(two: bytes) -> int | None:
    """The byte of \\x`two` as llama.cpp reads it: C's strtol(two, 16) must take both characters (a space and
    a sign before the digits included, as strtol allows them); None where it does not."""
    rest = two[1:] if two[:1].isspace() else two  # (C's white space is bytes.isspace's)
    sign = -1 if rest[:1] == b"-" else 1
    digits = rest[1:] if rest[:1] in (b"-", b"+") else rest
    if not digits or not all(c in _HEX for c in digits):
        return None
    return (sign * int(digits, 16)) & 0xFF


def process_escapes(text: str, what: str) -> str:
    """-e: the escapes llama.cpp processes (string_process_escapes): \\n \\r \\t \\' \\" \\\\ and \\xNN (a byte);
    a backslash before anything else stays as written. The bytes must still be UTF-8."""
    raw, out, i = text.encode("utf-8"), bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 1 < len(raw):
            code = raw[i + 1]
            if code in _ESCAPES:
                out += _ESCAPES[code]
                i += 2
                continue
            byte = _hex_escape(raw[i + 2:i + 4]) if code == ord("x") and i + 4 <= len(raw) else None
            if byte is not None:
                out.append(byte)
                i += 4
                continue
        out.append(raw[i])
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        _usage(f"{what} with its escapes processed (-e) is not UTF-8 text (byte {e.start})")


def _usage(message: str):
    raise UsageError(message)
