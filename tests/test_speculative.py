"""Speculative decoding gives bitwise the output of greedy decoding: the same tokens, and the same logits row
behind each token, whatever the drafter proposes, on tiny random models of every architecture."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refspec.backends import CpuBackend
from refspec.errors import UsageError
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load
from refspec.model import ARCHITECTURES, HYBRID_ARCHITECTURES
from refspec.speculative import (Drafter, LayerSkipDrafter, NgramDrafter, NoDrafter, make_drafter,
                                 speculative_generate)
from refspec.synthetic import write_model

from bits import assert_bits_equal

N_VOCAB = 283  # the synthetic tokenizer's size: 3 control tokens, 256 bytes, 24 merges


# ------------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(arch, seed, n_ctx, backend) -> Transformer over a random 2-layer GGUF (n_embd 64), cached."""
    directory = tmp_path_factory.mktemp("tiny")
    models, transformers = {}, {}

    def get(arch: str, seed: int = 0, n_ctx: int = 256, backend=None):
        key = (arch, seed, n_ctx)
        if key not in models:
            extra = dict(n_nextn=1) if arch == "qwen35" else {}  # with an MTP block
            path = write_model(directory / f"{arch}-{seed}-{n_ctx}.gguf", arch=arch, n_layer=2, n_embd=64,
                               n_ctx=n_ctx, seed=seed, **extra)
            models[key] = load(path)
        backend = backend or CpuBackend()
        tkey = key + (backend.name,)
        if tkey not in transformers:
            transformers[tkey] = Transformer(models[key], backend)
        return transformers[tkey]

    return get


# ---------------------------------------------------------------------------------------- test drafters
class RandomDrafter(Drafter):
    """Adversarial: 0..k random tokens."""

    name = "random"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def propose(self, context, k):
        return [int(t) for t in self.rng.integers(0, N_VOCAB, self.rng.integers(0, k + 1))]


class OracleDrafter(Drafter):
    """Proposes greedy's own continuation (`sequence` = prompt + greedy ids); checks the context it is given
    is a prefix of it. With `noise` > 0 each guess is replaced by a random token with that probability, so
    passes reject at every possible place."""

    name = "oracle"

    def __init__(self, sequence, noise: float = 0.0, seed: int = 0):
        self.sequence, self.noise = list(sequence), noise
        self.rng = np.random.default_rng(seed)
        self.requests = []  # (len(context), k) of every proposal

    def propose(self, context, k):
        assert context == self.sequence[: len(context)], "the loop's context is not greedy's"
        self.requests.append((len(context), k))
        guesses = self.sequence[len(context) : len(context) + k]
        return [int(self.rng.integers(0, N_VOCAB)) if self.rng.random() < self.noise else t for t in guesses]


def drafter_for(kind: str, tf, sequence, seed: int) -> Drafter:
    if kind == "random":
        return RandomDrafter(seed)
    if kind == "oracle":
        return OracleDrafter(sequence)
    if kind == "noisy-oracle":
        return OracleDrafter(sequence, noise=0.3, seed=seed)
    return make_drafter(kind, tf)


DRAFTER_KINDS = ("none", "ngram", "layerskip", "random", "oracle", "noisy-oracle")
GPU_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a not in HYBRID_ARCHITECTURES)  # no DeltaNet kernels yet


# ------------------------------------------------------------------------------------------- the check
def assert_same_as_greedy(spec_result, greedy_result):
    """Token for token, stop reason, and each token's logits row bit for bit."""
    assert spec_result.ids == greedy_result.ids
    assert spec_result.stop_reason == greedy_result.stop_reason
    assert len(spec_result.logits) == len(greedy_result.logits) == len(greedy_result.ids)
    for i, (got, want) in enumerate(zip(spec_result.logits, greedy_result.logits)):
        assert_bits_equal(got, want, f"logits row that chose token {i}")


def run_both(tf, prompt, n_predict, kind, draft_max, adaptive, eog_pick, seed):
    """Greedy, then speculative with the drafter `kind`; eog_pick (an index or None) makes the token greedy
    emits there an end-of-generation token, so generation stops at its first occurrence."""
    eog = frozenset()
    if eog_pick is not None:
        plain = generate(tf, prompt, n_predict, eog_ids=())
        eog = frozenset({plain.ids[eog_pick % len(plain.ids)]})
    greedy = generate(tf, prompt, n_predict, eog_ids=eog, keep_logits=True)
    drafter = drafter_for(kind, tf, prompt + greedy.ids, seed)
    streamed = []
    spec = speculative_generate(tf, prompt, n_predict, drafter=drafter, draft_max=draft_max, adaptive=adaptive,
                                eog_ids=eog, on_token=streamed.append, keep_logits=True)
    assert_same_as_greedy(spec, greedy)
    assert streamed == greedy.ids
    check_stats(spec)
    return greedy, spec, drafter


def check_stats(result):
    s = result.stats
    assert sum(s["accepted_histogram"]) == s["n_passes"]
    assert sum(a * c for a, c in enumerate(s["accepted_histogram"])) == s["n_accepted"] <= s["n_drafted"]
    # every decoding pass yields its accepted guesses and (unless a stop came first) one token more
    assert s["n_tokens"] - 1 <= s["n_passes"] + s["n_accepted"]
    if s["n_passes"]:
        assert s["mean_tokens_per_pass"] == round((s["n_tokens"] - 1) / s["n_passes"], 4)


prompts = st.tuples(
    st.lists(st.integers(0, N_VOCAB - 1), min_size=1, max_size=6), st.integers(1, 3),
    st.lists(st.integers(0, N_VOCAB - 1), max_size=3),
).map(lambda t: t[0] * t[1] + t[2])  # repeated pieces give the n-gram drafter something to find


@pytest.mark.parametrize("kind", DRAFTER_KINDS)
@given(arch=st.sampled_from(ARCHITECTURES), seed=st.integers(0, 2), prompt=prompts,
       n_predict=st.integers(1, 28), draft_max=st.integers(1, 8), adaptive=st.booleans(),
       eog_pick=st.none() | st.integers(0, 27))
def test_speculative_equals_greedy(tiny, kind, arch, seed, prompt, n_predict, draft_max, adaptive, eog_pick):
    run_both(tiny(arch, seed), prompt, n_predict, kind, draft_max, adaptive, eog_pick, seed)


@given(seed=st.integers(0, 2), prompt=prompts, n_predict=st.integers(1, 28), draft_max=st.integers(1, 8),
       adaptive=st.booleans(), eog_pick=st.none() | st.integers(0, 27))
def test_mtp_speculative_equals_greedy(tiny, seed, prompt, n_predict, draft_max, adaptive, eog_pick):
    run_both(tiny("qwen35", seed), prompt, n_predict, "mtp", draft_max, adaptive, eog_pick, seed)


@pytest.mark.parametrize("arch", HYBRID_ARCHITECTURES)
@pytest.mark.parametrize("kind", ["mtp", "layerskip", "noisy-oracle"])
def test_hybrid_context_limit_with_long_guesses(tiny, arch, kind):
    """Up to 16 guesses a pass, to the last position: the recurrent states of every row are kept."""
    tf, prompt = tiny(arch, n_ctx=40), [1, 2, 3, 1, 2]
    _, spec, _ = run_both(tf, prompt, -1, kind, 16, False, None, 1)
    assert spec.stop_reason == "context" and len(spec.ids) == 40 - len(prompt)


# --------------------------------------------------------------------------------------- exact corners
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_oracle_is_accepted_whole(tiny, arch, k):
    n_passes = 3
    _, spec, _ = run_both(tiny(arch), [3, 4, 5], 1 + n_passes * (k + 1), "oracle", k, False, None, 0)
    s = spec.stats
    assert s["acceptance_rate"] == 1.0 and s["mean_tokens_per_pass"] == k + 1
    assert s["n_passes"] == n_passes and s["accepted_histogram"][k] == n_passes


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eog_inside_an_accepted_run_stops_right_after_it(tiny, arch):
    tf, prompt, k = tiny(arch), [10, 11, 12], 8
    plain = generate(tf, prompt, 10, eog_ids=())
    # the first token greedy emits at index 1..8 that it has not emitted before: it is then accepted as a
    # guess in the middle of the first verify pass (which yields indices 1..9)
    m = next(i for i in range(1, 9) if plain.ids[i] not in plain.ids[:i])
    eog = frozenset({plain.ids[m]})
    greedy = generate(tf, prompt, 10, eog_ids=eog, keep_logits=True)
    drafter = OracleDrafter(prompt + plain.ids)
    spec = speculative_generate(tf, prompt, 10, drafter=drafter, draft_max=k, adaptive=False, eog_ids=eog,
                                keep_logits=True)
    assert_same_as_greedy(spec, greedy)
    assert spec.ids == plain.ids[: m + 1] and spec.stop_reason == "eog"
    assert spec.stats["n_passes"] == 1 and spec.stats["n_accepted"] == m


@pytest.mark.parametrize("n_predict", [1, 2, 5, 10, 12])
def test_max_tokens_caps_the_guesses(tiny, n_predict):
    tf, prompt = tiny("llama"), [7, 8]
    _, spec, drafter = run_both(tf, prompt, n_predict, "oracle", 8, False, None, 0)
    assert len(spec.ids) == n_predict and spec.stop_reason == "max_tokens"
    for n_context, k in drafter.requests:  # never more guesses than tokens left after the pass's own token
        assert k <= n_predict - (n_context - len(prompt)) - 1
    assert spec.stats["n_passes"] == (0 if n_predict == 1 else 1 if n_predict <= 10 else 2)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("kind", DRAFTER_KINDS)
def test_context_limit_runs_until_full_like_greedy(tiny, arch, kind):
    tf, prompt = tiny(arch, n_ctx=24), [1, 2, 3, 1, 2]
    _, spec, _ = run_both(tf, prompt, -1, kind, 8, True, None, 1)
    assert spec.stop_reason == "context" and len(spec.ids) == 24 - len(prompt)


def test_no_drafter_is_plain_greedy(tiny):
    tf = tiny("qwen2")
    greedy, spec, _ = run_both(tf, [4, 5, 6], 12, "none", 8, True, None, 0)
    s = spec.stats
    assert s["n_passes"] == greedy.stats["n_passes"] == 11 and s["mean_tokens_per_pass"] == 1
    assert s["n_drafted"] == 0 and s["acceptance_rate"] is None and s["accepted_histogram"][0] == 11
    assert s["verify_ms_mean"] is None and s["single_step_ms"] is not None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_argmax_is_argmax_rows_of_its_logits(tiny, arch):
    """forward(argmax=True), which the verify loop reads its tokens from: (what forward returns, the
    backend's argmax_rows of the logits), with hidden rows too; a non-bool argmax is refused."""
    from refspec import spec

    tf = tiny(arch)
    cache, plain = tf.new_cache(16), tf.new_cache(16)
    logits, (ids, finite) = tf.forward(cache, [7, 8, 9], 0, argmax=True)
    assert_bits_equal(logits, tf.forward(plain, [7, 8, 9], 0))
    want = spec.argmax_rows(logits)
    assert ids.tolist() == want[0].tolist() and finite.tolist() == want[1].tolist() == [True] * 3
    (logits, hidden), (ids, _) = tf.forward(cache, [10, 11], 3, hidden=True, argmax=True)
    assert_bits_equal(logits, tf.forward(plain, [10, 11], 3))
    assert hidden.shape == (2, tf.config.n_embd) and ids.tolist() == spec.argmax_rows(logits)[0].tolist()
    with pytest.raises(UsageError):
        tf.forward(cache, [1], 5, argmax=1)


def test_draft_max_zero_is_greedy(tiny):
    run_both(tiny("qwen3"), [4, 5, 6], 6, "oracle", 0, True, None, 0)


# -------------------------------------------------------------------------------------------- drafters
def test_ngram_proposes_what_followed_the_first_occurrence_of_the_most_common_continuation():
    d = NgramDrafter(max_n=4, min_n=1)
    assert d.propose([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert d.propose([5, 6, 1, 2, 7, 1, 2, 8, 1, 2], 2) == [7, 1]  # 7 and 8 once each: the first
    assert d.propose([1, 2, 7, 3, 1, 2, 7, 4, 1, 2, 8, 1, 2], 3) == [7, 3, 1]  # 7 twice, 8 once: 7's first
    assert d.propose([1, 2, 8, 3, 1, 2, 7, 4, 1, 2, 7, 5, 1, 2], 2) == [7, 4]  # 8 once, then 7 twice: 7's first
    assert d.propose([1, 2, 7, 3, 1, 2, 8, 4, 1, 2, 8, 5, 1, 2, 7, 6, 1, 2], 2) == [7, 3]  # 2 each: the first
    assert d.propose([9, 1, 2, 3, 5, 2, 3], 2) == [5, 2]  # "2 3" matches, "5 2 3" does not
    assert d.propose([1, 2, 3], 3) == [] and d.propose([4], 3) == []
    assert d.propose([7, 7, 7], 4) == [7, 7, 7, 7]  # a run keeps its period (overlapping copy)
    assert d.propose([1, 2, 3, 1, 2, 3, 1], 5) == [2, 3, 1, 2, 3]
    assert NgramDrafter(max_n=4, min_n=2).propose([1, 2, 3, 1], 3) == []  # no bigram match, unigrams off


def test_ngram_tie_goes_to_the_token_that_followed_first_even_after_it_lost_the_lead():
    """After 1: 5, then 6, 6 (6 leads), then 5 again (2 each): 5 followed 1 first, so it is the proposal again,
    copied from its first occurrence; an index that keeps the leader on a tie proposes [6, 1, 6], the latest
    occurrence rule [5, 1, 5]."""
    d = NgramDrafter(max_n=1)
    assert d.propose([1, 5, 1, 6, 1, 6, 1], 3) == [6, 1, 6]  # 6 twice, 5 once
    assert d.propose([1, 5, 1, 6, 1, 6, 1, 5, 1], 3) == [5, 1, 6]


def test_ngram_starts_a_copy_where_the_source_starts():
    """An answer that begins copying a list of records of one shape ("key: value") copies the first record;
    the latest occurrence of "key:" would copy the last one and run past the list's end."""
    source = [30, 1, 2, 31, 30, 1, 2, 32, 30, 1, 2, 33]
    d = NgramDrafter()
    assert d.propose(source + [0, 30, 1], 4) == [2, 31, 30, 1]  # the latest occurrence: [2, 33, 0, 30]
    assert d.propose(source + [0, 30, 1, 2, 31, 30, 1], 4) == [2, 32, 30, 1]  # then the second record


@pytest.mark.parametrize("max_n, unigram_max, context, guesses", [
    (4, 7, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1], [2, 3, 4, 5, 6, 7, 8]),  # one token matches: 7 at most
    (4, 15, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 3, 4, 5]),
    (4, 7, list(range(1, 18)) + [1, 2], list(range(3, 18))),  # two tokens match: all k
    (1, 0, [1, 2, 1], []),  # none from a one-token match
])
def test_ngram_caps_the_guesses_from_a_one_token_match(max_n, unigram_max, context, guesses):
    assert NgramDrafter(max_n=max_n, unigram_max=unigram_max).propose(context, 15) == guesses


def scan_proposal(context, k, max_n, min_n, unigram_max=7):
    """NgramDrafter's rule written as a scan of the whole context: what its index must reproduce."""
    ids = np.asarray(context, dtype=np.int64)
    for n in range(min(max_n, len(ids) - 1), min_n - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # each followed by a token
        hits = np.flatnonzero((windows == ids[-n:]).all(axis=1))
        if len(hits):
            follows = ids[hits + n]
            counts = {int(t): int((follows == t).sum()) for t in follows}
            most = max(counts.values())
            first = [h for h in hits if counts[int(ids[h + n])] == most][0]  # its token is the one taken
            start = int(first) + n
            k = min(k, unigram_max) if n == 1 else k
            copy = [int(t) for t in ids[start : start + k]]
            while len(copy) < k:
                copy.append(copy[-(len(ids) - start)])
            return copy
    return []


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 80), alphabet=st.integers(1, 6),
       steps=st.integers(1, 12), k=st.integers(1, 12), sizes=st.tuples(st.integers(1, 5), st.integers(0, 4)),
       unigram_max=st.integers(0, 10))
def test_ngram_index_proposes_what_a_scan_proposes(seed, length, alphabet, steps, k, sizes, unigram_max):
    """The drafter's incremental index against a scan of the whole context, over contexts that grow (as in
    decoding, by several tokens at a time), shrink, or change under it (then it must index afresh). Small
    alphabets make repeats, ties between occurrences (a token taking the lead, then losing it) and overlapping
    copies common."""
    rng = np.random.default_rng(seed)
    tokens = [int(t) for t in rng.integers(0, alphabet, length)]
    min_n = sizes[0]
    max_n = min_n + sizes[1]
    d = NgramDrafter(max_n=max_n, min_n=min_n, unigram_max=unigram_max)
    for cut in sorted(int(c) for c in rng.integers(1, length + 1, steps)):
        context = tokens[:cut]
        if rng.random() < 0.2:
            context = [alphabet - 1 - t for t in context]  # another context of the same length
        elif rng.random() < 0.1:
            context = context[: rng.integers(1, cut + 1)]  # a shorter one
        want = scan_proposal(context, k, max_n, min_n, unigram_max)
        assert d.propose(context, k) == want, (context, k)


def test_ngram_index_follows_a_decoding_loop():
    """A proposal after the context grew by the accepted tokens finds occurrences in the new tokens too."""
    d = NgramDrafter(max_n=2, min_n=1)
    assert d.propose([5, 6, 7], 2) == []
    assert d.propose([5, 6, 7, 8, 6], 2) == [7, 8]
    assert d.propose([5, 6, 7, 8, 6, 9, 8], 2) == [6, 9]  # "8" followed by 6 (index extended)
    assert d.propose([1, 2], 2) == []  # a new context: nothing of the old one is proposed
    assert d.propose([1, 2, 1], 3) == [2, 1, 2]


@pytest.mark.parametrize("context, k", [("hello", 3), ([1, "a", 2], 3), ([1, 2.5], 2), ([1, -2], 2), (5, 2),
                                        ([1, 2, 1], "x"), ([1, 2, 1], -1), ([1, True, 1], 2),
                                        ([1, np.int64(-3)], 2)])
def test_ngram_propose_refuses_what_is_not_token_ids(context, k):
    with pytest.raises(UsageError):
        NgramDrafter().propose(context, k)


def test_ngram_takes_numpy_token_ids():
    guesses = NgramDrafter().propose([np.int64(5), 6, np.int32(5)], 2)
    assert guesses == [6, 5] and all(type(t) is int for t in guesses)


@pytest.mark.parametrize("unigram_max", [-1, 2.0, "7", True, None])
def test_ngram_refuses_a_unigram_max_that_is_not_a_count(unigram_max):
    with pytest.raises(UsageError):
        NgramDrafter(unigram_max=unigram_max)


def test_ngram_index_is_unchanged_by_a_refused_context():
    """A context refused part-way through its new tokens leaves the index as it was: its continuation is
    then proposed for as by a drafter that never saw the refused one."""
    d = NgramDrafter(max_n=2, min_n=1)
    assert d.propose([5, 6, 7], 2) == []
    with pytest.raises(UsageError):
        d.propose([5, 6, 7, 6, 8, -1], 2)
    assert d.propose([5, 6, 7, 6, 8, 6], 2) == NgramDrafter(max_n=2, min_n=1).propose([5, 6, 7, 6, 8, 6], 2)
    with pytest.raises(UsageError):
        d.propose([1, -1], 2)  # not a continuation, refused: the index must not be reset either
    assert d.propose([5, 6, 7, 6, 8, 6, 9, 7], 2) == [6, 8]  # "7" followed by 6, before the refused call


def test_layerskip_default_layers(tmp_path, tiny):
    """Every layer but L//6 .. L//2-1, in order."""
    thirty = Transformer(load(write_model(tmp_path / "30.gguf", n_layer=30)), CpuBackend())
    assert LayerSkipDrafter(thirty).layers == list(range(5)) + list(range(15, 30))
    assert LayerSkipDrafter(tiny("llama")).layers == [1]


def test_layerskip_draft_kv_is_the_full_models_in_a_prefix_of_layers(tiny):
    """The reasoning in LayerSkipDrafter's docstring: in the layers before the first skipped one, the
    drafter's keys and values at the draft positions are bitwise what the verify pass writes there for the
    same tokens."""
    tf = tiny("qwen3")
    prompt = [20, 21, 22, 23]
    drafter = LayerSkipDrafter(tf, layers=[0])
    cache = tf.new_cache(32)
    drafter.begin(cache)
    tf.forward(cache, prompt[:-1], 0)
    drafts = drafter.propose(prompt, 4)
    assert len(drafts) == 4
    drafted = [(cache.k[i][:, 3:7].copy(), cache.v[i][:, 3:7].copy()) for i in range(tf.config.n_layer)]
    tf.forward(cache, [prompt[-1]] + drafts[:3], 3)  # verify the tokens the drafter ran
    for i in drafter.layers:
        assert_bits_equal(drafted[i][0], cache.k[i][:, 3:7], f"keys of layer {i}")
        assert_bits_equal(drafted[i][1], cache.v[i][:, 3:7], f"values of layer {i}")


def test_make_drafter_names():
    assert isinstance(make_drafter("none", None), NoDrafter)
    assert isinstance(make_drafter("ngram", None), NgramDrafter)
    with pytest.raises(UsageError):
        make_drafter("medusa", None)


def test_a_drafter_outside_the_vocabulary_is_an_error(tiny):
    class Bad(Drafter):
        def propose(self, context, k):
            return [N_VOCAB] * k

    with pytest.raises(UsageError):
        speculative_generate(tiny("llama"), [1, 2], 4, drafter=Bad())


def test_a_drafter_proposing_too_much_is_cut_to_k(tiny):
    class Greedy(Drafter):
        def propose(self, context, k):
            return [1] * (k + 5)

    tf = tiny("llama")
    spec = speculative_generate(tf, [1, 2], 6, drafter=Greedy(), draft_max=2, adaptive=False, keep_logits=True)
    assert_same_as_greedy(spec, generate(tf, [1, 2], 6, keep_logits=True))
    assert spec.stats["n_drafted"] <= 2 * spec.stats["n_passes"]


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("kind", DRAFTER_KINDS)
@given(arch=st.sampled_from(GPU_ARCHITECTURES), seed=st.integers(0, 2), prompt=prompts,
       n_predict=st.integers(1, 28), draft_max=st.integers(1, 8), adaptive=st.booleans(),
       eog_pick=st.none() | st.integers(0, 27))
def test_speculative_equals_greedy_on_gpu(gpu_backend, tiny, kind, arch, seed, prompt, n_predict, draft_max,
                                          adaptive, eog_pick):
    run_both(tiny(arch, seed, backend=gpu_backend), prompt, n_predict, kind, draft_max, adaptive, eog_pick, seed)


@pytest.fixture(scope="module")
def gpu_backend():
    gpu = pytest.importorskip("refspec.gpu")
    if not gpu.gpu_available():
        pytest.skip("no GPU")
    return gpu.GpuBackend()


# ---------------------------------------------------------------------------------------- the benchmark
def test_bench_decode_quick(tmp_path):
    import json

    from refspec.cli import main

    path = write_model(tmp_path / "tiny.gguf", arch="qwen2", n_ctx=1024)  # the chat prompts need ~300 positions
    out = tmp_path / "bench.json"
    assert main(["bench", "decode", "-m", str(path), "--device", "cpu", "--quick", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["speculative"]["mismatches"] == [] and report["greedy"]["tokens_per_second_median"] > 0
    assert {r["method"] for r in report["speculative"]["runs"]} == {"greedy", "ngram", "layerskip"}
    assert all(r["identical"] for r in report["speculative"]["runs"])
    assert report["conditional"] is False and report["conditional_node"] is None  # (no captured passes on the CPU)
    # the GPU comparison flags are accepted (and do nothing) on the CPU
    assert main(["bench", "decode", "-m", str(path), "--device", "cpu", "--quick", "--no-conditional",
                 "--no-overlap", "--no-short-rows", "--no-even-blocks", "--json-out", str(out), "-t", "1"]) == 0
    again = json.loads(out.read_text())
    assert again["speculative"]["mismatches"] == [] and again["hardware"]["threads"] == 1  # -t: the CPU's threads


def test_bench_decode_quick_qwen35_reports_the_mtp_draft_step(tmp_path):
    """A qwen35 model with an MTP block: bench decode runs the mtp drafter on the copy prompts (equal to
    greedy) and times one MTP draft step beside a one-row step of the model."""
    import json

    from refspec.cli import main

    path = write_model(tmp_path / "q35.gguf", arch="qwen35", n_layer=4, n_nextn=1, n_ctx=1024)
    out = tmp_path / "bench.json"
    assert main(["bench", "decode", "-m", str(path), "--device", "cpu", "--quick", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["speculative"]["runs"]} == {"greedy", "ngram", "layerskip", "mtp"}
    assert all(r["identical"] for r in report["speculative"]["runs"])
    mtp = report["mtp"]
    assert mtp["draft_step_ms"] > 0 and mtp["model_step_ms"] > 0 and mtp["position"] == 64


def test_which_runs_chain_their_passes_on_the_device():
    """chained_ngram: only NgramDrafter itself, with k fixed at 1..15 guesses, n-grams the kernel takes, no
    logits kept, no recurrent layers, on a backend with the device step and captured passes, and with room in
    the context for the passes queued past the last token."""
    from types import SimpleNamespace

    from refspec.speculative import CHAIN_SLACK, chained_ngram

    def tf(graphs=True, step=True, recurrent=(), n_ctx=1000):
        be = SimpleNamespace(NGRAM_MAX_N=8, **({"speculative_next": None} if step else {}))
        return SimpleNamespace(graphs=SimpleNamespace(max_rows=16) if graphs else None, be=be,
                               recurrent_layers=lambda: list(recurrent), config=SimpleNamespace(n_ctx=n_ctx))

    class Mine(NgramDrafter):
        pass

    ok = dict(draft_max=7, adaptive=False, keep_logits=False, n_alloc=100)
    assert chained_ngram(tf(), NgramDrafter(), **ok)
    assert chained_ngram(tf(n_ctx=100 + CHAIN_SLACK * 8), NgramDrafter(), **ok)
    assert not chained_ngram(tf(n_ctx=99 + CHAIN_SLACK * 8), NgramDrafter(), **ok)  # no room past the end
    assert not chained_ngram(tf(graphs=False), NgramDrafter(), **ok)
    assert not chained_ngram(tf(step=False), NgramDrafter(), **ok)
    assert not chained_ngram(tf(recurrent=[0]), NgramDrafter(), **ok)
    assert not chained_ngram(tf(), Mine(), **ok)  # a subclass may propose otherwise
    assert not chained_ngram(tf(), NgramDrafter(max_n=9), **ok)
    assert not chained_ngram(tf(), NoDrafter(), **ok)
    for change in (dict(draft_max=0), dict(draft_max=16), dict(adaptive=True), dict(keep_logits=True)):
        assert not chained_ngram(tf(), NgramDrafter(), **{**ok, **change}), change
    assert chained_ngram(tf(), NgramDrafter(), **{**ok, "draft_max": 15})
