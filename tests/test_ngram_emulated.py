"""kernels_raw/ngram.hip's kernels on the CPU: compiled as C++ and run by 256 std::threads as one thread block
(tests/cuda_threads.h, AddressSanitizer on), against refspec.speculative's NgramDrafter and the host loop's
accept and stop rules. The GPU tests (tests/test_gpu_graphs.py) check the same kernels on the device; these
run everywhere, so a change to the drafting or the step is checked without a GPU. They check the kernels'
logic and bounds, not the device's memory model."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec.gpu import NGRAM_MAX_STOP, GpuBackend
from refspec.speculative import NgramDrafter

HERE = pathlib.Path(__file__).parent
KERNEL = HERE.parent / "kernels_raw" / "ngram.hip"
CXX = shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver (tests/ngram_emulated.cpp) built around ngram.hip's source with its device-only words taken
    out; with AddressSanitizer where the compiler has it."""
    out = tmp_path_factory.mktemp("ngram-emulated")
    source = KERNEL.read_text()
    for word in ('#include "portable.h"', 'extern "C" ', "__restrict__"):
        assert word in source, word  # (the kernel still looks as the emulation expects)
        source = source.replace(word, "")
    (out / "ngram_kernel.inc").write_text(source)
    binary = out / "ngram_emulated"
    base = [CXX, "-std=c++20", "-O1", "-g", "-pthread", f"-I{HERE}", f"-I{out}", str(HERE / "ngram_emulated.cpp"),
            "-o", str(binary)]
    built = subprocess.run(base[:4] + ["-fsanitize=address"] + base[4:], capture_output=True, text=True)
    if built.returncode:
        built = subprocess.run(base, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]

    def run(lines: list[str]) -> list[list[int]]:
        done = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[:3000]
        return [[int(v) for v in line.split()] for line in done.stdout.splitlines()]

    return run


def line(kind: str, *parts) -> str:
    """A case for the driver: its kind, then every number of parts (numbers or sequences) in order."""
    return " ".join([kind] + [str(int(v)) for part in parts for v in (part if np.ndim(part) else [part])])


def contexts(data, rng, length_max: int) -> list[int]:
    """A context of a few symbols (many occurrences, ties) or many, that may end in a copy of an earlier
    stretch."""
    symbols = data.draw(st.sampled_from([1, 2, 3, 5, 50]), label="symbols")
    context = [int(t) for t in rng.integers(0, symbols, data.draw(st.integers(1, length_max), label="length"))]
    if len(context) > 4 and data.draw(st.booleans(), label="copy"):
        start = int(rng.integers(0, len(context) - 2))
        context += context[start : start + int(rng.integers(1, 12))]
    return context


NGRAMS = st.integers(1, 8).flatmap(lambda max_n: st.tuples(st.just(max_n), st.integers(1, max_n), st.integers(0, 16)))


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_ngram_propose_is_the_drafters(driver, data):
    """ngram_propose (the longest trailing n-gram found by one scan, its occurrences counted in shared memory
    or, past 2048, again from the context) proposes what NgramDrafter's index does."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    cases, want = [], []
    for _ in range(data.draw(st.integers(1, 30), label="cases")):
        context = contexts(data, rng, data.draw(st.sampled_from([40, 400, 5000]), label="length max"))
        max_n, min_n, unigram_max = data.draw(NGRAMS, label="ngram")
        k = data.draw(st.integers(0, 16), label="k")
        cases.append(line("P", k, max_n, min_n, unigram_max, len(context), context))
        proposal = NgramDrafter(max_n, min_n, unigram_max).propose(context, k)
        want.append([len(proposal)] + proposal)
    for case, got, expected in zip(cases, driver(cases), want, strict=True):
        assert got == expected, case


@pytest.mark.parametrize("context, max_n", [([0, 1] * 1500 + [0], 1), ([3] * 3000, 4),
                                            (list(np.random.default_rng(2).integers(0, 2, 5000)), 1)])
def test_ngram_propose_counts_past_what_shared_memory_keeps(driver, context, max_n):
    context = [int(t) for t in context]
    got = driver([line("P", k, max_n, 1, 7, len(context), context) for k in (1, 7, 15)])
    for k, g in zip((1, 7, 15), got):
        proposal = NgramDrafter(max_n).propose(context, k)
        assert g == [len(proposal)] + proposal


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_speculative_next_is_the_host_loops_step(driver, data):
    """speculative_next after a pass: the accept rule (a guess is accepted while its row's argmax is finite
    and equals it), the record, the tokens into the context, the end of the run as the host's loop sees it (an
    end-of-generation id among the tokens, the first 16 known; the context reaching the limit; a pass that
    computed nothing), and the next pass's input and guesses by NgramDrafter's rule. A pass with no guesses at
    n - 2 that chose the context's last token is how the first chained pass's guesses are proposed."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    cases, want = [], []
    for _ in range(data.draw(st.integers(1, 30), label="cases")):
        width = data.draw(st.integers(2, 16), label="width")
        n_pos = data.draw(st.sampled_from([40, 400, 3000]), label="n_pos")
        context = contexts(data, rng, n_pos - width - 1)[: n_pos - width - 1]  # a pass fits the cache
        pos0 = len(context) - 1
        real = data.draw(st.integers(0, width - 1), label="real guesses")
        guesses = [int(t) for t in rng.integers(0, 5, width - 1)]
        accepted = data.draw(st.integers(0, real), label="accepted")
        chosen = np.zeros((width, 2), np.int64)
        chosen[:, 0] = rng.integers(0, 5, width)
        chosen[:accepted, 0] = guesses[:accepted]
        if accepted < real:  # the first rejected guess: a wrong id, or the right one not finite
            if data.draw(st.booleans(), label="not finite"):
                chosen[accepted] = guesses[accepted], 1
            else:
                chosen[accepted, 0] = (guesses[accepted] + 1) % 5
        chosen[accepted + 1 :, 1] = rng.integers(0, 2, width - accepted - 1)  # (rows never looked at)
        tokens = [int(t) for t in chosen[: accepted + 1, 0]]
        eog = data.draw(st.lists(st.integers(0, 6), max_size=20), label="eog ids")
        limit = data.draw(st.none() | st.integers(pos0 + 1, pos0 + width + 2), label="limit")
        dead = data.draw(st.booleans(), label="computed nothing")
        max_n, min_n, unigram_max = data.draw(NGRAMS, label="ngram")
        inputs = [pos0, context[-1]] + guesses
        cases.append(line("S", width, n_pos, max_n, min_n, unigram_max, inputs, chosen.ravel(), real,
                          0 if dead else real + 1, len(context), context, GpuBackend.stop_buffer(limit, eog)))
        full = context + tokens
        ends = dead or any(t in set(sorted(set(eog))[:NGRAM_MAX_STOP]) for t in tokens) or (
            limit is not None and len(full) >= limit)
        proposal = NgramDrafter(max_n, min_n, unigram_max).propose(full, width - 1)
        want.append([len(proposal), 0 if ends else len(proposal) + 1, len(tokens), real] + list(chosen.ravel())
                    + [min(len(full) - 1, n_pos - width), full[-1]] + proposal
                    + [full[-1]] * (width - 1 - len(proposal)) + full + [0] * (width - len(tokens)))
    for case, got, expected in zip(cases, driver(cases), want, strict=True):
        assert got == expected, case
