"""Captured passes (refspec/gpu_graphs.py) equal eager passes bit for bit: logits and KV cache over many steps
at every width 1..16, with layer subsets, across 256-position attention chunks; and speculative decoding with
graphs on equals greedy decoding."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec.backends import CpuBackend
from refspec.errors import ContextLengthError, NumericsError
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load
from refspec.gpu import gpu_available
from refspec.gpu_graphs import GRAPH_MAX_ROWS
from refspec.speculative import NgramDrafter, make_drafter, speculative_generate
from refspec.synthetic import write_model

from bits import assert_bits_equal

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy sees none")]

SHAPES = {
    # n_ff of 33 blocks: the down projection's 5-8 row GEMVs take GEMV_FEW_BLOCKS (long rows, few weight rows)
    "llama": dict(n_layer=3, n_embd=128, n_ff=1056, n_head=4, n_head_kv=2, head_dim=32),
    "qwen2": dict(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2),
    "qwen3": dict(n_layer=2, n_embd=64, n_ff=224, n_head=6, n_head_kv=2, head_dim=48, n_rot=16),
}
N_CTX = 600


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str, tmp_dir: str):
    path = write_model(f"{tmp_dir}/{arch}.gguf", arch=arch, n_ctx=N_CTX, seed=5, **SHAPES[arch])
    return load(path, log=lambda message: None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp_dir = str(tmp_path_factory.mktemp("graph-models"))
    return lambda arch: tiny_model(arch, tmp_dir)


@pytest.fixture(scope="module")
def gpu():
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=0xFF)


def run_steps(tf, widths, ids, layers=None):
    cache = tf.new_cache(N_CTX)
    out, pos = [], 0
    for w in widths:
        out.append(tf.be.to_host(tf.forward(cache, ids[pos : pos + w], pos, layers=layers)).copy())
        pos += w
    return out, cache


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_graph_replay_equals_eager_at_every_width(models, gpu, arch):
    model = models(arch)
    rng = np.random.default_rng(3)
    # every width twice (capture, then replay), in an order that crosses the 256-position chunk boundary
    widths = [w for w in range(1, GRAPH_MAX_ROWS + 1) for _ in range(2)] + [1] * 40 + [16, 7, 1, 1]
    ids = list(rng.integers(0, model.config.n_vocab, sum(widths)))
    graphed = Transformer(model, gpu, graphs=True)
    eager = Transformer(model, gpu, graphs=False)
    g_out, g_cache = run_steps(graphed, widths, ids)
    e_out, e_cache = run_steps(eager, widths, ids)
    assert graphed.graphs.captured == GRAPH_MAX_ROWS
    for i, (g, e) in enumerate(zip(g_out, e_out)):
        assert_bits_equal(g, e, f"{arch}: pass {i} ({widths[i]} rows)")
    for layer in range(model.config.n_layer):
        assert_bits_equal(gpu.to_host(g_cache.k[layer]), gpu.to_host(e_cache.k[layer]), f"{arch}: K cache {layer}")
        assert_bits_equal(gpu.to_host(g_cache.v[layer]), gpu.to_host(e_cache.v[layer]), f"{arch}: V cache {layer}")


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_graph_argmax_equals_eager_argmax(models, gpu, arch):
    """forward(argmax=True) with graphs (the argmax captured in the pass, one transfer back) gives the
    eager pass's logits and be.argmax_rows of them, at every width, recorded and replayed, with hidden rows
    too; rows whose logits hold NaN or infinity (the RoPE table poisoned from position 40) are flagged."""
    model = models(arch)
    graphed, eager = Transformer(model, gpu, graphs=True), Transformer(model, gpu, graphs=False)
    widths = [w for w in range(1, GRAPH_MAX_ROWS + 1) for _ in range(2)]
    ids = list(np.random.default_rng(9).integers(0, model.config.n_vocab, sum(widths)))
    caches = graphed.new_cache(N_CTX), eager.new_cache(N_CTX)
    for cache in caches:
        cache.rope_cos[40:] = np.nan
    pos = 0
    for i, w in enumerate(widths):
        hidden = i % 3 == 2
        got = graphed.forward(caches[0], ids[pos : pos + w], pos, hidden=hidden, argmax=True)
        out = eager.forward(caches[1], ids[pos : pos + w], pos, hidden=hidden)
        logits = out[0] if hidden else out
        want = gpu.argmax_rows(logits)
        (g_logits, g_hidden), (g_ids, g_finite) = (got[0] if hidden else (got[0], None)), got[1]
        where = f"{arch}: pass {i} ({w} rows at {pos})"
        assert_bits_equal(gpu.to_host(g_logits), gpu.to_host(logits), where)
        if hidden:
            assert_bits_equal(gpu.to_host(g_hidden), gpu.to_host(out[1]), where + ", hidden rows")
        assert g_ids.tolist() == want[0].tolist() and g_finite.tolist() == want[1].tolist(), where
        assert g_finite.tolist() == [p < 40 for p in range(pos, pos + w)], where
        pos += w


def test_graphs_of_layer_subsets_equal_eager(models, gpu):
    model = models("llama")
    ids = list(np.random.default_rng(4).integers(0, model.config.n_vocab, 30))
    widths = [1] * 30
    for layers in ([0], [0, 2], None):
        g_out, _ = run_steps(Transformer(model, gpu, graphs=True), widths, ids, layers)
        e_out, _ = run_steps(Transformer(model, CpuBackend()), widths, ids, layers)
        for i, (g, e) in enumerate(zip(g_out, e_out)):
            assert_bits_equal(g, e, f"layers {layers}: step {i}")


@pytest.mark.parametrize("draft", ["ngram", "layerskip"])
def test_speculative_with_graphs_equals_greedy(models, gpu, draft):
    model = models("llama")
    tf = Transformer(model, gpu, graphs=True)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    greedy = generate(tf, prompt, 60, keep_logits=True)
    spec = speculative_generate(tf, prompt, 60, drafter=make_drafter(draft, tf), draft_max=8, keep_logits=True)
    assert spec.ids == greedy.ids
    for i, (a, b) in enumerate(zip(spec.logits, greedy.logits)):
        assert_bits_equal(np.asarray(a), np.asarray(b), f"{draft}: logits of token {i}")
    cpu = generate(Transformer(model, CpuBackend()), prompt, 60)
    assert greedy.ids == cpu.ids


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_ngram_kernel_proposes_what_the_drafter_proposes(gpu, data):
    """kernels_raw/ngram.hip's proposal (a scan of the context) is NgramDrafter's (its index), on contexts of
    a few symbols (many occurrences, ties) that end in a copy of an earlier stretch, for every n-gram size,
    cap and k a chained pass takes."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    symbols = data.draw(st.integers(1, 6), label="symbols")
    context = list(rng.integers(0, symbols, data.draw(st.integers(1, 300), label="length")))
    if len(context) > 4 and data.draw(st.booleans(), label="copy"):
        start = int(rng.integers(0, len(context) - 2))
        context += context[start : start + int(rng.integers(1, 12))]
    max_n = data.draw(st.integers(1, 8), label="max_n")
    min_n = data.draw(st.integers(1, max_n), label="min_n")
    unigram_max = data.draw(st.integers(0, 16), label="unigram_max")
    k = data.draw(st.integers(0, 15), label="k")
    want = NgramDrafter(max_n, min_n, unigram_max).propose(context, k)
    assert gpu.ngram_propose(context, k, max_n, min_n, unigram_max) == want


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_step_sees_the_run_end_where_the_host_loop_does(gpu, data):
    """speculative_next leaves the next pass no rows to compute (drafted[1] = 0) exactly where the host's loop
    stops at this pass: an end-of-generation id among its tokens (the accepted guesses and the token after
    them; ids in rejected rows do not count), or the context reaching the run's limit. A pass that computed
    nothing (the run had ended) leaves none either. Otherwise: its guesses + 1."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    width = data.draw(st.integers(2, 16), label="width")
    n_pos = 96
    pos0 = data.draw(st.integers(0, n_pos - width - 1), label="pos0")
    context = rng.integers(0, 5, pos0 + 1).astype(np.int32)
    real = data.draw(st.integers(0, width - 1), label="real guesses")
    guesses = rng.integers(0, 5, width - 1).astype(np.int32)
    accepted = data.draw(st.integers(0, real), label="accepted")
    chosen = np.zeros((width, 2), np.int32)
    chosen[:, 0] = rng.integers(0, 5, width)
    chosen[:accepted, 0] = guesses[:accepted]
    if accepted < real:
        chosen[accepted, 0] = (guesses[accepted] + 1) % 5  # the first rejected guess
    tokens = [int(t) for t in chosen[: accepted + 1, 0]]
    eog = data.draw(st.lists(st.integers(0, 6), max_size=20), label="eog ids")  # (past 16: the first 16 count)
    limit = data.draw(st.none() | st.integers(pos0 + 1, pos0 + width + 2), label="limit")
    dead = data.draw(st.booleans(), label="computed nothing")
    cp = gpu.cp
    inputs = cp.asarray(np.concatenate([[pos0, context[-1]], guesses]).astype(np.int32))
    drafted = cp.asarray(np.array([real, 0 if dead else real + 1], np.int32))
    ctx = cp.zeros(n_pos + width, np.int32)
    ctx[: pos0 + 1] = cp.asarray(context)
    record = cp.zeros(2 + 2 * width, np.int32)
    stop = gpu.stop_buffer(limit, eog)
    gpu.speculative_next(inputs, cp.asarray(chosen), ctx, drafted, record, cp.asarray(stop), width, n_pos, (4, 1, 7))
    known = set(sorted(set(eog))[:16])
    length = pos0 + 1 + len(tokens)  # the context after the pass's tokens
    ends = dead or any(t in known for t in tokens) or (limit is not None and length >= limit)
    got = [int(v) for v in drafted.get()]
    assert int(record[0].get()) == len(tokens)
    assert got[1] == (0 if ends else got[0] + 1), (got, tokens, eog, limit, length, dead)
    # the rest of the step: the record, the tokens into the context, the next pass's input and guesses
    assert [int(v) for v in record[1:].get()] == [real] + [int(v) for v in chosen.ravel()]
    full = [int(t) for t in context] + tokens
    assert [int(v) for v in ctx[:length].get()] == full
    proposal = NgramDrafter(4, 1, 7).propose(full, width - 1)
    assert got[0] == len(proposal)
    want = [min(length - 1, n_pos - width), full[-1]] + proposal + [full[-1]] * (width - 1 - len(proposal))
    assert [int(v) for v in inputs.get()] == want


@settings(max_examples=100, deadline=None)
@given(token=st.integers(0, 6), eog=st.lists(st.integers(0, 6), max_size=20), computed=st.sampled_from([0, 1]))
def test_greedy_step_sees_the_run_end_where_the_host_loop_does(gpu, token, eog, computed):
    """greedy_next leaves the next step nothing to compute (live 0) exactly when the host's loop stops at the
    token chosen (one of the run's end-of-generation ids; past 16 the first 16 count), or when this step
    computed nothing; and advances the input either way."""
    cp = gpu.cp
    result = cp.asarray(np.array([[token, 0]], np.int32))
    inputs = cp.asarray(np.array([41, 3], np.int32))
    live = cp.asarray(np.array([computed], np.int32))
    gpu.greedy_next(result, inputs, live, cp.asarray(gpu.stop_buffer(None, eog)))
    ends = computed == 0 or token in set(sorted(set(eog))[:16])
    assert [int(v) for v in inputs.get()] == [42, token]
    assert int(live.get()[0]) == (0 if ends else 1)
    plain = cp.asarray(np.array([41, 3], np.int32))
    gpu.greedy_next(result, plain)  # without live: the input alone
    assert [int(v) for v in plain.get()] == [42, token]


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_greedy_step_queued_past_the_end_computes_nothing(models, gpu, arch):
    """A chained greedy run that stops at an end-of-generation id leaves the step queued after it no rows
    (its live count 0); a run that stops at its budget, or whose stop ids never come, leaves it 1."""
    tf = Transformer(models(arch), gpu)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(tf, prompt, 12, eog_ids=()).ids
    firsts = [t for i, t in enumerate(want) if i >= 1 and want.index(t) == i]  # tokens a chained step chose first
    assert firsts, want
    for eog, count in (([firsts[-1]], 0), ([], 1), ([min(set(range(300)) - set(want))], 1), ([firsts[0]], 0)):
        got = generate(tf, prompt, 12, eog_ids=eog)
        assert got.ids == (want[: want.index(eog[0]) + 1] if count == 0 else want)
        (g,) = [slot.cache.graphs["greedy"] for slot in tf._cache_pool if "greedy" in slot.cache.graphs]
        assert int(g.live.get()[0]) == count, (eog, got.stop_reason)


def test_device_proposes_the_first_guesses_as_the_host_does(models, gpu):
    """speculative_steps with drafts None (the device proposes the first pass's guesses, speculative_next run
    as though a pass had yielded the context's last token): the same passes as with the host drafter's
    proposal, for the graph's first capture and its replays."""
    tf = Transformer(models("llama"), gpu)
    context = [5, 6, 7, 8, 9] * 6 + [5, 6]  # its last token follows an earlier 5 too: guesses at once
    width, ngram = 8, (4, 1, 7)
    host = NgramDrafter(*ngram).propose(context, width - 1)
    runs = []
    for drafts in (None, host, None):  # the first captures the graph, the others replay it
        cache = tf.new_cache(len(context) + 12 * width, n_states=width + 1)
        tf.forward(cache, context[:-1], 0)
        passes = tf.graphs.speculative_steps(cache, context, drafts, width, ngram)
        runs.append([(ids.tolist(), finite.tolist(), guesses) for ids, finite, guesses in
                     (next(passes) for _ in range(6))])
        passes.close()
    assert runs[0][0][2] == len(host) > 0  # (the first pass verifies guesses)
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("context, max_n", [([0, 1] * 1500 + [0], 1), ([3] * 3000, 4),
                                            (list(np.random.default_rng(2).integers(0, 2, 5000)), 1)])
def test_ngram_kernel_counts_past_what_shared_memory_keeps(gpu, context, max_n):
    """An n-gram with more occurrences than the kernel keeps in shared memory (2048) is counted from global
    memory: the same proposal."""
    context = [int(t) for t in context]
    for k in (1, 7, 15):
        assert gpu.ngram_propose(context, k, max_n) == NgramDrafter(max_n).propose(context, k)


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_chained_speculative_equals_greedy_and_the_host_loop(models, gpu, arch):
    """speculative_generate with the ngram drafter and graphs chains its verify passes on the device
    (PassGraphs.speculative_steps): greedy's tokens and stop reason, in the host loop's passes, for several
    draft_max, budgets that end inside a pass, an end-of-generation id, and a reused cache."""
    model = models(arch)
    tf = Transformer(model, gpu)
    prompt = [5, 6, 7, 8, 9] * 6 + [5, 6]  # the ngram drafter finds guesses at once
    greedy = generate(tf, prompt, 90, eog_ids=())
    accepted = 0
    for draft_max in (1, 3, 7, 15):
        for n in (90, 37, 2, 1, 90):
            runs = [speculative_generate(tf, prompt, n, drafter=make_drafter("ngram", tf), draft_max=draft_max,
                                         eog_ids=(), chain=chain) for chain in (False, True)]
            host, got = runs
            assert got.ids == host.ids == greedy.ids[:n], f"draft_max {draft_max}, {n} tokens"
            assert (got.stop_reason, got.stats["n_passes"]) == (host.stop_reason, host.stats["n_passes"])
            assert (got.stats["chained"], host.stats["chained"]) == (True, False)
            assert json.loads(json.dumps(got.stats)) == got.stats  # plain numbers (bench decode writes them)
            accepted += got.stats["n_accepted"]
    assert accepted > 0  # (the test exercises accepted guesses)
    for stop in (greedy.ids[10], greedy.ids[40]):
        first = greedy.ids.index(stop)
        got = speculative_generate(tf, prompt, 90, drafter=make_drafter("ngram", tf), eog_ids=[stop])
        assert (got.ids, got.stop_reason) == (greedy.ids[: first + 1], "eog")


def test_tensor_core_gemv_passes_equal_cpu(models):
    """With GEMVs of 2+ rows on tensor cores (q8_gemv_mma), captured passes of every width equal the CPU."""
    from refspec.gpu import GpuBackend

    be = GpuBackend(mma_min_rows=2, mma_min_weights=0)
    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    for arch in sorted(SHAPES):
        model = models(arch)
        widths = list(range(1, GRAPH_MAX_ROWS + 1)) * 2
        ids = list(np.random.default_rng(6).integers(0, model.config.n_vocab, sum(widths)))
        g_out, _ = run_steps(Transformer(model, be, graphs=True), widths, ids)
        c_out, _ = run_steps(Transformer(model, CpuBackend()), widths, ids)
        for i, (g, c) in enumerate(zip(g_out, c_out)):
            assert_bits_equal(g, c, f"{arch} with tensor cores: pass {i} ({widths[i]} rows)")


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_chained_greedy_equals_eager_greedy(models, gpu, arch):
    """generate() with graphs queues each step (pass, argmax, next input on the device) ahead of the host
    (PassGraphs.greedy_steps): the same tokens, stop reasons and pass counts as eager decoding when the
    budget ends it, when an end-of-generation id stops it midway (steps queued past it are dropped), when
    the context ends it, and again on a reused cache (the chain recorded once)."""
    model = models(arch)
    eager, chained = Transformer(model, gpu, graphs=False), Transformer(model, gpu)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(eager, prompt, 40, eog_ids=())
    for _ in range(2):
        got = generate(chained, prompt, 40, eog_ids=())
        assert (got.ids, got.stop_reason, got.stats["n_passes"]) == (want.ids, want.stop_reason, 39)
    assert chained.graphs.captured == 2  # one pass (the prompt's 8 rows) and one chained step: reused
    for n in (1, 2, 3):
        assert generate(chained, prompt, n, eog_ids=()).ids == want.ids[:n]
    stop = want.ids[6]
    first = want.ids.index(stop)
    got = generate(chained, prompt, 40, eog_ids=[stop])
    assert got.ids == generate(eager, prompt, 40, eog_ids=[stop]).ids == want.ids[: first + 1]
    assert got.stop_reason == "eog"
    # and the next request after an early stop starts clean
    assert generate(chained, prompt, 40, eog_ids=()).ids == want.ids
    whole = generate(chained, prompt, -1, eog_ids=())
    assert whole.stop_reason == "context" and whole.ids == generate(eager, prompt, -1, eog_ids=()).ids


def test_chained_greedy_raises_on_nan_logits(models, gpu):
    """NaN or infinity in the logits of a chained step (not the first) ends decoding with NumericsError, as
    eagerly: the RoPE table of positions 10 and later is poisoned, so the third step's logits are NaN. The
    same for speculative decoding."""
    model = models("llama")
    for graphs in (False, True):
        tf = Transformer(model, gpu, graphs=graphs)
        new_cache = tf.new_cache

        def poisoned(*args, new_cache=new_cache, **kwargs):
            cache = new_cache(*args, **kwargs)
            cache.rope_cos[10:] = np.inf
            return cache

        tf.new_cache = poisoned
        with pytest.raises(NumericsError):
            generate(tf, [1, 2, 3, 4, 5, 6, 7, 8], 5, eog_ids=())
        with pytest.raises(NumericsError):  # verify passes with the argmax in their graph
            speculative_generate(tf, [1, 2, 3, 4, 5, 6, 7, 8], 5, drafter=make_drafter("ngram", tf), eog_ids=())
        assert generate(tf, [1, 2, 3], 5, eog_ids=()).ids  # positions 0..7 only: fine


def test_caches_of_similar_lengths_share_storage_and_graphs(models, gpu):
    """With graphs, new_cache rounds its storage up to CACHE_ROUND positions: requests of 34 and 45 positions
    reuse one storage and its captured passes (nothing is captured again), give eager decoding's tokens,
    and a cache still refuses positions past its own n_pos."""
    tf, eager = Transformer(models("llama"), gpu), Transformer(models("llama"), gpu, graphs=False)
    generate(tf, [1, 2, 3, 4], 30, eog_ids=())
    captured = tf.graphs.captured
    got = generate(tf, [5, 6, 7, 8], 41, eog_ids=())  # the same prompt width: its pass graph is there too
    assert tf.graphs.captured == captured
    assert got.ids == generate(eager, [5, 6, 7, 8], 41, eog_ids=()).ids
    cache = tf.new_cache(10)
    assert cache.n_pos == 10 and cache.k[0].shape[1] == min(tf.CACHE_ROUND, N_CTX)
    tf.forward(cache, [1] * 9, 0)
    tf.forward(cache, [1], 9)
    with pytest.raises(ContextLengthError):
        tf.forward(cache, [1], 10)


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_overlapped_launches_equal_plain_launches(models, arch):
    """Kernels launched to overlap their boundaries (GpuBackend(overlap=True), refspec/gpu_launch.py; the
    default on sm_90+) give the bits of kernels launched one after the other and of the CPU: passes of every
    width, eager and captured, and chained greedy decoding. No poison here: its fills between kernels would
    serialize them and hide a race."""
    from refspec.gpu import GpuBackend

    plain = GpuBackend(overlap=False)
    if not plain.overlap_available:
        pytest.skip("no programmatic dependent launch (NVIDIA sm_90+)")
    over = GpuBackend(overlap=True)
    assert GpuBackend().overlap  # the default where available
    model = models(arch)
    widths = [w for w in range(1, GRAPH_MAX_ROWS + 1) for _ in range(2)] + [1] * 40 + [16, 7, 1, 1]
    ids = list(np.random.default_rng(8).integers(0, model.config.n_vocab, sum(widths)))
    c_out, _ = run_steps(Transformer(model, CpuBackend()), widths, ids)
    for graphs in (True, False):
        o_out, o_cache = run_steps(Transformer(model, over, graphs=graphs), widths, ids)
        p_out, p_cache = run_steps(Transformer(model, plain, graphs=graphs), widths, ids)
        for i, (o, p, c) in enumerate(zip(o_out, p_out, c_out)):
            assert_bits_equal(o, p, f"{arch}, graphs {graphs}: pass {i} ({widths[i]} rows), overlapped vs plain")
            assert_bits_equal(o, c, f"{arch}, graphs {graphs}: pass {i} ({widths[i]} rows), overlapped vs CPU")
        for layer in range(model.config.n_layer):
            assert_bits_equal(over.to_host(o_cache.k[layer]), plain.to_host(p_cache.k[layer]), f"K cache {layer}")
            assert_bits_equal(over.to_host(o_cache.v[layer]), plain.to_host(p_cache.v[layer]), f"V cache {layer}")
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(Transformer(model, CpuBackend()), prompt, 60, eog_ids=(), keep_logits=True)
    got = generate(Transformer(model, over), prompt, 60, eog_ids=(), keep_logits=True)
    assert got.ids == want.ids
    for i, (a, b) in enumerate(zip(got.logits, want.logits)):
        assert_bits_equal(np.asarray(a), np.asarray(b), f"{arch}: chained greedy, logits of token {i}")
    assert generate(Transformer(model, over), prompt, 60, eog_ids=()).ids == want.ids  # chained steps


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_conditional_passes_equal_plain_ones(models, gpu, arch):
    """Chained passes captured behind conditional nodes (refspec/gpu_conditional.py: the one-row body for a
    pass that guesses nothing, nothing past a run's end), by one SWITCH node where the driver has them and by
    two IF nodes, yield what passes captured as one body computing their live rows yield, and leave the same KV
    cache bits: speculative passes over a run that guesses, then guesses nothing, at several widths; greedy runs
    that stop at an end-of-generation id or their budget."""
    tf = Transformer(models(arch), gpu)
    conditional = tf.graphs.conditional
    if conditional is None:
        pytest.skip("no conditional graph nodes (NVIDIA, CUDA 12.4+ driver)")
    switch = conditional.switch
    ways = ([True] if switch else []) + [False, None]  # SWITCH node, IF nodes, one body
    names = {True: "SWITCH node", False: "IF nodes", None: "one body"}

    def capture_by(way):
        tf.graphs.conditional = None if way is None else conditional
        conditional.switch = bool(way)

    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(tf, prompt, 16, eog_ids=()).ids
    guessed = set()
    try:
        for width in (2, 8, 16):
            # the first pass guesses (the last two tokens came before), or guesses nothing (61 is new)
            for context in ([5, 6, 7, 8, 9] * 6 + [5, 6], [5, 6, 7, 8, 9] * 6 + [5, 6, 61]):
                runs = []
                for way in ways:
                    capture_by(way)
                    cache = tf.new_cache(len(context) + 14 * width, n_states=width + 1)
                    cache.graphs.clear()  # pooled storage comes back with its graphs: capture them this way
                    tf.forward(cache, context[:-1], 0)
                    passes = tf.graphs.speculative_steps(cache, context, None, width, (4, 1, 7))
                    got = [(ids.tolist(), finite.tolist(), guesses) for ids, finite, guesses in
                           (next(passes) for _ in range(10))]
                    passes.close()
                    runs.append((got, [gpu.to_host(a).copy() for a in list(cache.k) + list(cache.v)]))
                b, b_kv = runs[-1]
                for way, (a, a_kv) in zip(ways, runs):
                    where = f"{arch}, {names[way]}, width {width}, context ending {context[-3:]}"
                    assert a == b, where
                    for i, (x, y) in enumerate(zip(a_kv, b_kv)):
                        assert_bits_equal(x, y, f"{where}: cache array {i}")
                guessed |= {g > 0 for _, _, g in runs[0][0]}
        assert guessed == {True, False}  # both bodies ran
        for eog in ([want[5]], []):
            got = []
            for way in ways:
                capture_by(way)
                for slot in tf._cache_pool:
                    slot.cache.graphs.clear()
                got.append(generate(tf, prompt, 16, eog_ids=eog))
            for run in got:
                assert run.ids == want[: want.index(eog[0]) + 1 if eog else 16]
                assert run.stop_reason == got[-1].stop_reason
    finally:
        tf.graphs.conditional, conditional.switch = conditional, switch
