"""refspec's tokenizer on llama.cpp's own tokenizer test suite: the vocabulary-only GGUFs
``models/ggml-vocab-NAME.gguf`` with their cases ``.gguf.inp`` and expected ids ``.gguf.out``, as
``tests/test-tokenizer-0.cpp`` runs them (no BOS or EOS added, control tokens not parsed).

The files come from the llama-cpp-python 0.3.36 sdist (tests/llama_vocab_files.py says how); without the network
these tests skip, except under ``CI=true``.
"""
import pathlib

import pytest

from llama_vocab_files import read_cases, vocab_dir as find_vocab_dir
from refspec.gguf_model import read_metadata
from refspec.tokenizer import Tokenizer

# Every vocabulary with .inp/.out files in that llama.cpp, and the cases each holds (test-tokenizer-0 reads them
# into a map, so a repeated input counts once).
VOCABULARIES = {"bert-bge": 46, "command-r": 46, "deepseek-coder": 46, "deepseek-llm": 46, "falcon": 46,
                "gemma-4": 46, "gpt-2": 46, "llama-bpe": 46, "llama-spm": 46, "mpt": 46, "phi-3": 46, "qwen2": 46,
                "qwen35": 50, "refact": 46, "starcoder": 46}
# Vocabularies whose text does not survive tokenization: WordPiece lower-cases, strips accents and puts spaces
# around punctuation (llama.cpp's own round trip holds on 4 of bert-bge's 46 cases; refspec's on 3 of them: on
# "!!!!!!" llama.cpp's detokenize removes the spaces it prints before each "!").
NO_ROUND_TRIP = {"bert-bge"}


@pytest.fixture(scope="session")
def vocab_dir():
    return find_vocab_dir()


def load_vocabulary(vocab_dir: pathlib.Path, name: str) -> tuple[Tokenizer, dict[str, list[int]]]:
    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    cases = read_cases(path.with_name(path.name + ".inp"), path.with_name(path.name + ".out"))
    return Tokenizer.from_metadata(read_metadata(path, ("tokenizer.",))), cases


def test_every_vocabulary_llama_cpp_tests_is_here(vocab_dir):
    tested = {p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab_dir.glob("ggml-vocab-*.gguf.inp")}
    assert tested == set(VOCABULARIES)


@pytest.mark.parametrize("name", sorted(VOCABULARIES))
def test_vocabulary(vocab_dir, name):
    """Every case of the vocabulary: encoding gives llama.cpp's expected ids (the failure says how many cases
    pass), decoding those ids gives the case back, and so does decode(encode(case)) without BOS, as llama.cpp's
    test round-trips (but for WordPiece, NO_ROUND_TRIP). refspec's round trip holds on every case of the others;
    llama.cpp's own (its detokenize) fails on some,
    where it cleans up spaces before punctuation (" ?" in a case becomes "?" for gpt-2, llama-bpe, falcon, mpt,
    starcoder, refact, gemma-4)."""
    tokenizer, cases = load_vocabulary(vocab_dir, name)
    assert len(cases) == VOCABULARIES[name]
    got = {text: tokenizer.encode(text, add_bos=False, add_eos=False, parse_special=False) for text in cases}
    wrong = [text for text, ids in cases.items() if got[text] != ids]
    examples = "; ".join(f"{text[:40]!r}: expected {cases[text][:12]}, got {got[text][:12]}" for text in wrong[:3])
    assert not wrong, f"{name}: {len(cases) - len(wrong)} of {len(cases)} cases pass; {examples}"
    if name in NO_ROUND_TRIP:
        return
    for text, ids in cases.items():
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(tokenizer.encode(text, add_bos=False, parse_special=False)) == text
