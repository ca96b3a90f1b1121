"""refspec's tokenizer on llama.cpp's own tokenizer test suite: the vocabulary-only GGUFs
``models/ggml-vocab-NAME.gguf`` with their cases ``.gguf.inp`` and expected ids ``.gguf.out``, as
``tests/test-tokenizer-0.cpp`` runs them (no BOS or EOS added, control tokens not parsed).

The files come from llama.cpp's source inside the llama-cpp-python 0.3.36 sdist on PyPI, fetched once with pip
(``pip download``; pip's own cache serves it again where ``pip install '.[llamacpp]'`` built it from that sdist),
checked against its pinned SHA-256, and the vocabulary files extracted into refspec's cache directory. Without
the network the tests skip and say why, except under ``CI=true``, where they must run.
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
from refspec.errors import TokenizerError
from refspec.gguf_model import read_metadata
from refspec.tokenizer import Tokenizer

SDIST = "llama-cpp-python==0.3.36"
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MEMBER = re.compile(r"[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9.-]+\.gguf(\.inp|\.out)?)")
CACHE = default_cache_dir() / "llama.cpp-vocabs-0.3.36"

# Every vocabulary with .inp/.out files in that llama.cpp, and the cases each holds (test-tokenizer-0 reads them
# into a map, so a repeated input counts once).
VOCABULARIES = {"bert-bge": 46, "command-r": 46, "deepseek-coder": 46, "deepseek-llm": 46, "falcon": 46,
                "gemma-4": 46, "gpt-2": 46, "llama-bpe": 46, "llama-spm": 46, "mpt": 46, "phi-3": 46, "qwen2": 46,
                "qwen35": 50, "refact": 46, "starcoder": 46}
# Vocabularies refspec refuses, and the part of the refusal message that says why (the README lists them).
REFUSED = {"bert-bge": "unsupported tokenizer model 'bert'"}
SEPARATOR = "\n__ggml_vocab_test__\n"


@pytest.fixture(scope="session")
def vocab_dir() -> pathlib.Path:
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
        os.replace(out, target)


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


def load_vocabulary(vocab_dir: pathlib.Path, name: str) -> tuple[Tokenizer, dict[str, list[int]]]:
    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    cases = read_cases(path.with_name(path.name + ".inp"), path.with_name(path.name + ".out"))
    return Tokenizer.from_metadata(read_metadata(path, ("tokenizer.",))), cases


def test_every_vocabulary_llama_cpp_tests_is_here(vocab_dir):
    tested = {p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab_dir.glob("ggml-vocab-*.gguf.inp")}
    assert tested == set(VOCABULARIES)


@pytest.mark.parametrize("name", sorted(set(VOCABULARIES) - set(REFUSED)))
def test_vocabulary(vocab_dir, name):
    """Every case of the vocabulary: encoding gives llama.cpp's expected ids (the failure says how many cases
    pass), decoding those ids gives the case back, and so does decode(encode(case)) without BOS, as llama.cpp's
    test round-trips. refspec's round trip holds on every case; llama.cpp's own (its detokenize) fails on some,
    where it cleans up spaces before punctuation (" ?" in a case becomes "?" for gpt-2, llama-bpe, falcon, mpt,
    starcoder, refact, gemma-4)."""
    tokenizer, cases = load_vocabulary(vocab_dir, name)
    assert len(cases) == VOCABULARIES[name]
    got = {text: tokenizer.encode(text, add_bos=False, add_eos=False, parse_special=False) for text in cases}
    wrong = [text for text, ids in cases.items() if got[text] != ids]
    examples = "; ".join(f"{text[:40]!r}: expected {cases[text][:12]}, got {got[text][:12]}" for text in wrong[:3])
    assert not wrong, f"{name}: {len(cases) - len(wrong)} of {len(cases)} cases pass; {examples}"
    for text, ids in cases.items():
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(tokenizer.encode(text, add_bos=False, parse_special=False)) == text


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_vocabularies_say_why(vocab_dir, name):
    with pytest.raises(TokenizerError, match=REFUSED[name]):
        load_vocabulary(vocab_dir, name)
