"""llama.cpp's tokenizer test files (``models/ggml-vocab-NAME.gguf`` with ``.gguf.inp``/``.gguf.out``), from
llama.cpp's source inside the llama-cpp-python 0.3.36 sdist on PyPI: fetched once with pip (``pip download``;
pip's own cache serves it again where ``pip install '.[llamacpp]'`` built it from that sdist), checked against
its pinned SHA-256, and the vocabulary files extracted into refspec's cache directory. Without the network
tests that need them skip and say why, except under ``CI=true``, where they must run.
"""
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

import pytest

from refspec.default_model import default_cache_dir

SDIST = "llama-cpp-python==0.3.36"
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MEMBER = re.compile(r"[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9.-]+\.gguf(\.inp|\.out)?)")
CACHE = default_cache_dir() / "llama.cpp-vocabs-0.3.36"

SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_dir() -> pathlib.Path:
    """The directory of the extracted files, fetched first if need be."""
    if not (CACHE / "complete").is_file():
        try:
            _fetch(CACHE)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, ValueError) as exc:
            reason = f"llama.cpp's vocabulary tests are not cached and could not be fetched: {exc}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
    return CACHE


def _fetch(target: pathlib.Path) -> None:
    """pip download the sdist, check its hash, extract models/ggml-vocab-* into ``target`` (renamed into place
    whole, so the cache never holds part of it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = pathlib.Path(tmp)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                                 "-d", str(tmp), "--disable-pip-version-check", "--no-input", "--timeout", "30"],
                                capture_output=True, text=True, timeout=900)
        sdist = tmp / SDIST_NAME
        if result.returncode != 0 or not sdist.is_file():
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise OSError(f"pip download {SDIST} failed: {lines[-1] if lines else result.returncode}")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise ValueError(f"{SDIST_NAME} has SHA-256 {digest}, expected {SDIST_SHA256}")
        out = tmp / "vocabs"
        out.mkdir()
        with tarfile.open(sdist) as archive:
            for member in archive:
                match = MEMBER.fullmatch(member.name)
                if match and member.isfile():
                    (out / match.group(1)).write_bytes(archive.extractfile(member).read())
        (out / "complete").write_text(f"{SDIST} {SDIST_SHA256}\n")
        try:
            os.replace(out, target)
        except OSError:
            if not (target / "complete").is_file():  # not another run that got there first
                raise


def read_cases(inp: pathlib.Path, out: pathlib.Path) -> dict[str, list[int]]:
    """test-tokenizer-0's read_tests: inputs joined by SEPARATOR (no trailing empty case), one line of
    space-separated ids per input; a map, so the last of repeated inputs wins."""
    raw = inp.read_bytes().decode("utf-8")
    inputs, pos = [], 0
    while pos < len(raw):
        end = raw.find(SEPARATOR, pos)
        if end < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:end])
        pos = end + len(SEPARATOR)
    lines = out.read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(inputs) == len(lines), f"{inp.name}: {len(inputs)} inputs, {len(lines)} lines of ids"
    return {text: [int(t) for t in line.split()] for text, line in zip(inputs, lines)}


