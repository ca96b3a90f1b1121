"""qwen35 on the GPU: each kernel of kernels_raw/deltanet.hip equals its spec twin bit for bit on drawn shapes
and values (outputs poisoned before every launch), and a tiny qwen35 model gives the CPU's logits, stays
batch invariant and decodes speculatively exactly as greedy does. GPU only (marked `gpu`)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refspec import spec
from refspec.backends import CpuBackend
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load
from refspec.errors import UsageError
from refspec.gpu import gpu_available
from refspec.gpu_graphs import GRAPH_MAX_ROWS
from refspec.model import QK8_0
from refspec.speculative import make_drafter, speculative_generate
from refspec.synthetic import write_model

from bits import assert_bits_equal
from test_gpu_kernels import STYLES, assert_same, floats, rng_from

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy sees none")]

F32 = np.float32


@pytest.fixture(scope="module", params=(0xFF, 0x5A), ids=lambda p: f"poison{p:#x}")
def be(request):
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=request.param)


# ------------------------------------------------------------------------------------------ the kernels
@given(data=st.data())
def test_elementwise_ops_equal_spec(be, data):
    rng = rng_from(data)
    n = data.draw(st.integers(1, 3000), label="n")
    x = floats(rng, (n,), data.draw(STYLES, label="x"))
    g = floats(rng, (n,), data.draw(STYLES, label="g"))
    edges = np.array([-87.0, 88.0, 20.0, 20.000002, -100.0, np.inf, -np.inf, np.nan, 0.0, -0.0], F32)
    g[rng.random(n) < 0.1] = rng.choice(edges)
    with np.errstate(all="ignore"):
        assert_same(be.to_host(be.silu(be.asarray(g))), spec.silu(g), "silu", nan_equal=True)
        assert_same(be.to_host(be.sigmoid_gate(be.asarray(x), be.asarray(g))), spec.sigmoid_gate(x, g),
                    "sigmoid_gate", nan_equal=True)


@given(data=st.data())
def test_deltanet_gates_equal_spec(be, data):
    rng = rng_from(data)
    rows, heads = data.draw(st.integers(1, 20), label="rows"), data.draw(st.integers(1, 64), label="heads")
    alpha = floats(rng, (rows, heads), data.draw(st.sampled_from(["normal", "special"]), label="alpha"))
    b = floats(rng, (rows, heads), data.draw(STYLES, label="b"))
    dt = (rng.standard_normal(heads) * 5).astype(F32)
    a = -rng.uniform(0.01, 20, heads).astype(F32)
    with np.errstate(all="ignore"):
        want = spec.deltanet_gates(alpha, b, dt, a)
    got = be.deltanet_gates(*(be.asarray(t) for t in (alpha, b, dt, a)))
    for g, w, what in zip(got, want, ("decay", "beta")):
        assert_same(be.to_host(g), w, what, nan_equal=True)


def test_log1p_through_softplus_covers_the_range(be):
    """softplus's log1p on every exp(x) the gates can see (x in [-90, 25]), against the spec's."""
    alpha = np.linspace(-90, 25, 200_001, dtype=F32).reshape(-1, 1)
    zeros, a = np.zeros(1, F32), -np.ones(1, F32)
    want, _ = spec.deltanet_gates(alpha, alpha, zeros, a)
    got, _ = be.deltanet_gates(be.asarray(alpha), be.asarray(alpha), be.asarray(zeros), be.asarray(a))
    assert_same(be.to_host(got), want, "decay = exp(-softplus(x))")


@given(data=st.data())
def test_l2norm_and_gated_rmsnorm_equal_spec(be, data):
    rng = rng_from(data)
    shape = (data.draw(st.integers(1, 16)), data.draw(st.integers(1, 9)), data.draw(st.integers(1, 300)))
    x = floats(rng, shape, data.draw(STYLES, label="x"))
    z = floats(rng, shape, data.draw(STYLES, label="z"))
    w = floats(rng, shape[-1:], "normal")
    eps = data.draw(st.sampled_from([1e-6, 1e-5, 0.0]), label="eps")
    with np.errstate(all="ignore"):
        assert_same(be.to_host(be.l2norm(be.asarray(x), eps)), spec.l2norm(x, eps), "l2norm", nan_equal=True)
        assert_same(be.to_host(be.gated_rmsnorm(be.asarray(x), be.asarray(w), be.asarray(z), eps)),
                    spec.gated_rmsnorm(x, w, z, eps), "gated_rmsnorm", nan_equal=True)


def position(be, data, pos0: int):
    """pos0 as a host int or as pass_input's device int32 [1] (what a captured pass gives the kernels)."""
    return be.asarray(np.array([pos0], np.int32)) if data.draw(st.booleans(), label="device pos") else pos0


@given(data=st.data())
def test_conv1d_equals_spec_and_keeps_each_rows_state(be, data):
    """conv1d_causal and the fused conv1d_silu equal the CPU's (spec.conv1d_causal on the ring slots of
    spec.ring_slots) in outputs and ring: rows below and above n_states (the kernel reads the ring in place
    or a copy), position 0 (zeros) and later, the position as a host int or in device memory."""
    rng = rng_from(data)
    rows, channels = data.draw(st.integers(1, 20), label="rows"), data.draw(st.integers(1, 300), label="channels")
    taps = data.draw(st.integers(1, 6) | st.integers(30, 40), label="taps")
    n_states = data.draw(st.integers(1, 20), label="n_states")
    pos0 = data.draw(st.integers(0, 50), label="pos0")
    fused = data.draw(st.booleans(), label="conv1d_silu")
    x = floats(rng, (rows, channels + 5), data.draw(STYLES, label="x"))  # a column slice, as from a stack
    w = floats(rng, (channels, taps), "normal")
    ring = floats(rng, (n_states, channels, taps - 1), "normal")
    cpu_ring = ring.copy()
    name = "conv1d_silu" if fused else "conv1d_causal"
    with np.errstate(all="ignore"):
        want = getattr(CpuBackend(), name)(x[:, 3 : 3 + channels], w, cpu_ring, pos0)
    gpu_ring = be.asarray(ring)
    got = getattr(be, name)(be.asarray(x)[:, 3 : 3 + channels], be.asarray(w), gpu_ring, position(be, data, pos0))
    assert_same(be.to_host(got), want, name, nan_equal=True)
    assert_same(be.to_host(gpu_ring), cpu_ring, f"{name} states", nan_equal=True)


@given(data=st.data())
def test_delta_rule_equals_spec_and_keeps_each_rows_state(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 20), label="rows")
    n_k, group = data.draw(st.integers(1, 4), label="key heads"), data.draw(st.integers(1, 3), label="group")
    dim = data.draw(st.sampled_from([1, 5, 16, 31, 32, 33, 64, 100, 128, 256]), label="dim")
    n_states = data.draw(st.integers(1, 20), label="n_states")
    pos0 = data.draw(st.integers(0, 50), label="pos0")
    n_v = n_k * group
    q = spec.l2norm(floats(rng, (rows, n_k, dim), "normal"), 1e-6)
    k = spec.l2norm(floats(rng, (rows, n_k, dim), "normal"), 1e-6)
    v = floats(rng, (rows, n_v, dim), data.draw(STYLES, label="v"))
    decay = rng.uniform(0, 1, (rows, n_v)).astype(F32)
    beta = rng.uniform(0, 1, (rows, n_v)).astype(F32)
    ring = floats(rng, (n_states, n_v, dim, dim), "normal")
    cpu_ring = ring.copy()
    with np.errstate(all="ignore"):
        want = CpuBackend.delta_rule(q, k, v, decay, beta, cpu_ring, pos0)
    gpu_ring = be.asarray(ring)
    got = be.delta_rule(*(be.asarray(t) for t in (q, k, v, decay, beta)), gpu_ring, position(be, data, pos0))
    assert_same(be.to_host(got), want, "delta rule", nan_equal=True)
    assert_same(be.to_host(gpu_ring), cpu_ring, "delta rule states", nan_equal=True)


@given(data=st.data())
def test_l2norm_of_heads_lying_apart_equals_spec(be, data):
    """l2norm of [R, heads, n] heads read in place from a wider buffer (q and k inside the conv's output)."""
    rng = rng_from(data)
    rows, heads = data.draw(st.integers(1, 16), label="rows"), data.draw(st.integers(1, 8), label="heads")
    n = data.draw(st.sampled_from([1, 5, 16, 31, 32, 33, 64, 128, 200]), label="n")
    left, right = data.draw(st.sampled_from([0, 4, 8]), label="left"), data.draw(st.integers(0, 9), label="right")
    buf = floats(rng, (rows, left + heads * n + right), data.draw(STYLES, label="x"))
    eps = data.draw(st.sampled_from([1e-6, 0.0]), label="eps")
    view = be.asarray(buf)[:, left : left + heads * n].reshape(rows, heads, n)
    with np.errstate(all="ignore"):
        want = spec.l2norm(buf[:, left : left + heads * n].reshape(rows, heads, n), eps)
    assert_same(be.to_host(be.l2norm(view, eps)), want, "l2norm of heads in place", nan_equal=True)


@given(data=st.data())
def test_gated_rmsnorm_q8_equals_its_composition(be, data):
    """gated_rmsnorm with z read in place from a stacked output, and gated_rmsnorm_q8 (fused when the head
    size is whole blocks of 32) equal to FusedFromParts's composition: quantize_q8 of gated_rmsnorm's rows."""
    rng = rng_from(data)
    rows, heads = data.draw(st.integers(1, 16), label="rows"), data.draw(st.integers(1, 8), label="heads")
    n = data.draw(st.sampled_from([32, 64, 128, 256, 5, 48, 100]), label="n")
    x = floats(rng, (rows, heads, n), data.draw(STYLES, label="x"))
    zbuf = floats(rng, (rows, 8 + heads * n + 12), data.draw(STYLES, label="z"))
    w = floats(rng, (n,), "normal")
    eps = data.draw(st.sampled_from([1e-6, 0.0]), label="eps")
    z_host = zbuf[:, 8 : 8 + heads * n].reshape(rows, heads, n)
    z_view = be.asarray(zbuf)[:, 8 : 8 + heads * n].reshape(rows, heads, n)
    cpu = CpuBackend()
    with np.errstate(all="ignore"):
        want = spec.gated_rmsnorm(x, w, z_host, eps)
    assert_same(be.to_host(be.gated_rmsnorm(be.asarray(x), be.asarray(w), z_view, eps)), want, "gated_rmsnorm",
                nan_equal=True)
    if heads * n % QK8_0:
        return  # rows that are not whole Q8_0 blocks cannot be quantized (a model's always are)
    with np.errstate(all="ignore"):
        want_q, want_d = cpu.gated_rmsnorm_q8(x, w, z_host, eps)
    got_q, got_d = be.gated_rmsnorm_q8(be.asarray(x), be.asarray(w), z_view, eps)
    assert_same(be.to_host(got_q), want_q, "gated_rmsnorm_q8 quants")
    assert_same(be.to_host(got_d), want_d, "gated_rmsnorm_q8 scales", nan_equal=True)


@given(data=st.data())
def test_gated_delta_rule_equals_its_composition(be, data):
    """gated_delta_rule (the gates computed inside the delta rule) equals FusedFromParts's composition,
    delta_rule(*deltanet_gates(...)), in outputs and ring, with q, k, v and the gate inputs read in place as
    forward.py passes them: q and k heads of one normed buffer, v and alpha, b column views of wider ones."""
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 17), label="rows")
    n_k, group = data.draw(st.integers(1, 4), label="key heads"), data.draw(st.integers(1, 3), label="group")
    dim = data.draw(st.sampled_from([1, 5, 16, 32, 33, 64, 128]), label="dim")
    n_states = data.draw(st.integers(1, 18), label="n_states")
    pos0 = data.draw(st.integers(0, 40), label="pos0")
    n_v = n_k * group
    qk = spec.l2norm(floats(rng, (rows, 2 * n_k, dim), "normal"), 1e-6)
    vbuf = floats(rng, (rows, 4 + n_v * dim + 3), data.draw(STYLES, label="v"))
    gbuf = (rng.standard_normal((rows, 4 + 2 * n_v)) * 4).astype(F32)  # [.., b, alpha] as the stack lays them
    gbuf[rng.random(gbuf.shape) < 0.05] = 25.0  # softplus's linear side
    dt = (rng.standard_normal(n_v) * 3).astype(F32)
    a = -rng.uniform(0.01, 16, n_v).astype(F32)
    ring = floats(rng, (n_states, n_v, dim, dim), "normal")

    def parts(qk, vbuf, gbuf):
        return (qk[:, :n_k], qk[:, n_k:], vbuf[:, 4 : 4 + n_v * dim].reshape(rows, n_v, dim),
                gbuf[:, 4 + n_v :], gbuf[:, 4 : 4 + n_v])  # q, k, v, alpha, b

    cpu_ring = ring.copy()
    with np.errstate(all="ignore"):
        want = CpuBackend().gated_delta_rule(*parts(qk, vbuf, gbuf), dt, a, cpu_ring, pos0)
    gpu_ring = be.asarray(ring)
    got = be.gated_delta_rule(*parts(be.asarray(qk), be.asarray(vbuf), be.asarray(gbuf)), be.asarray(dt),
                              be.asarray(a), gpu_ring, position(be, data, pos0))
    assert_same(be.to_host(got), want, "gated delta rule", nan_equal=True)
    assert_same(be.to_host(gpu_ring), cpu_ring, "gated delta rule states", nan_equal=True)


@given(data=st.data())
def test_gated_attention_ops_read_queries_and_gates_in_place(be, data):
    """split_query_gate's views of a stacked output (queries and gates interleaved per head), a key view:
    rmsnorm reads each head in place and equals spec.rmsnorm; sigmoid_gate_q8 reads the gates in place and
    equals FusedFromParts's composition, quantize_q8 of sigmoid_gate's [R, H*D] rows."""
    rng = rng_from(data)
    rows, heads = data.draw(st.integers(1, 16), label="rows"), data.draw(st.integers(1, 8), label="heads")
    dim = data.draw(st.sampled_from([32, 64, 96, 128, 256]), label="dim")
    kv_heads = data.draw(st.integers(1, 4), label="kv heads")
    pad = data.draw(st.sampled_from([0, 32]), label="pad")
    # [R, pad | H*2*D (q, gate per head) | G*D keys]: the stacked Q/K GEMV's output laid out as forward sees it
    buf = floats(rng, (rows, pad + 2 * heads * dim + kv_heads * dim), data.draw(STYLES, label="qg"))
    w = floats(rng, (dim,), "normal")
    eps = data.draw(st.sampled_from([1e-6, 0.0]), label="eps")
    cpu = CpuBackend()
    host_q, host_g = cpu.split_query_gate(buf[:, pad : pad + 2 * heads * dim], heads, dim)
    host_k = buf[:, pad + 2 * heads * dim :].reshape(rows, kv_heads, dim)
    dev = be.asarray(buf)
    q, g = be.split_query_gate(dev[:, pad : pad + 2 * heads * dim], heads, dim)
    k = dev[:, pad + 2 * heads * dim :].reshape(rows, kv_heads, dim)
    assert_same(be.to_host(q), host_q, "queries")
    assert_same(be.to_host(g), host_g, "gates")
    with np.errstate(all="ignore"):
        assert_same(be.to_host(be.rmsnorm(q, be.asarray(w), eps)), spec.rmsnorm(host_q, w, eps), "q_norm",
                    nan_equal=True)
        assert_same(be.to_host(be.rmsnorm(k, be.asarray(w), eps)), spec.rmsnorm(host_k, w, eps), "k_norm",
                    nan_equal=True)
        a = floats(rng, (rows, heads, dim), data.draw(STYLES, label="a"))
        want_q, want_d = cpu.sigmoid_gate_q8(a, host_g)
    got_q, got_d = be.sigmoid_gate_q8(be.asarray(a), g)
    assert_same(be.to_host(got_q), want_q, "sigmoid_gate_q8 quants")
    assert_same(be.to_host(got_d), want_d, "sigmoid_gate_q8 scales", nan_equal=True)


# ------------------------------------------------------------------------------------------ whole models
SHAPE = dict(arch="qwen35", n_layer=4, n_embd=64, n_ff=96, n_head=2, n_head_kv=1, head_dim=32, n_ctx=320,
             ssm_d_state=16, ssm_n_k_heads=2, ssm_n_v_heads=4, full_attention_interval=2, n_nextn=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny qwen35 model with its MTP block (True) and without (False)."""
    tmp = tmp_path_factory.mktemp("q35")
    return {mtp: load(write_model(tmp / f"q35-{mtp}.gguf", seed=5, **dict(SHAPE, n_nextn=int(mtp))),
                      log=lambda message: None) for mtp in (True, False)}


@pytest.fixture(scope="module", params=(0xFF, None), ids=("poison0xff", "no-poison"))
def gpu_backend(request):
    """With poison, every output's every element is shown written; without, nothing lies between kernels,
    so that overlapped launches (the default on sm_90+, refspec/gpu_launch.py) really overlap."""
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=request.param)


@pytest.fixture(scope="module")
def trio(models, gpu_backend):
    """The model with its MTP block on the CPU, on the GPU with graphs and on the GPU launch by launch."""
    model = models[True]
    return (Transformer(model, CpuBackend()), Transformer(model, gpu_backend, graphs=True),
            Transformer(model, gpu_backend, graphs=False))


def test_tiny_qwen35_gpu_equals_cpu_and_is_batch_invariant(trio):
    cpu, _, gpu = trio
    lw = gpu.weights.layers[0]  # a DeltaNet layer: its four input projections are one stacked GEMV
    assert lw.w_qkv.stack is not None and all(w.stack is lw.w_qkv.stack for w in (lw.w_z, lw.w_beta, lw.w_alpha))
    ids = [5, 9, 100, 7, 33, 8, 250, 11, 40, 77, 3]
    c_cache, g_cache, s_cache = cpu.new_cache(32), gpu.new_cache(32), gpu.new_cache(32)
    for start, stop in ((0, 4), (4, 5), (5, 11)):
        want = cpu.forward(c_cache, ids[start:stop], start)
        got = gpu.be.to_host(gpu.forward(g_cache, ids[start:stop], start))
        assert_bits_equal(got, want, f"logits of positions {start}..{stop - 1}")
        for j, p in enumerate(range(start, stop)):
            one = gpu.be.to_host(gpu.forward(s_cache, ids[p : p + 1], p))
            assert_bits_equal(one[0], got[j], f"position {p} alone")


def verify_like_steps(seed: int, n_ctx: int):
    """(pos0, rows) of passes as a speculative decoder makes them: every width 1..16 twice, each pass
    resuming after a drawn row of the one before (an accepted guess), then single steps."""
    rng = np.random.default_rng(seed)
    steps, pos = [], 0
    for w in [w for w in range(1, GRAPH_MAX_ROWS + 1) for _ in range(2)] + [1] * 20:
        steps.append((pos, w))
        pos += int(rng.integers(1, w + 1))
    assert pos + GRAPH_MAX_ROWS < n_ctx
    return steps


def run_passes(tf, steps, ids, n_states, hidden=False):
    """Each pass's result on the host, and the cache."""
    cache = tf.new_cache(SHAPE["n_ctx"], n_states=n_states)
    out = []
    for pos, w in steps:
        result = tf.forward(cache, ids[pos : pos + w], pos, hidden=hidden)
        out.append([tf.be.to_host(a).copy() for a in (result if hidden else (result,))])
    return out, cache


def assert_caches_equal(be, a, b, what: str):
    """K, V and the recurrent-state rings (every slot) of two caches, as bits."""
    for i in range(len(a.k)):
        for name in ("k", "v", "conv", "ssm"):
            x, y = getattr(a, name)[i], getattr(b, name)[i]
            assert (x is None) == (y is None)
            if x is not None:
                assert_bits_equal(be.to_host(x), be.to_host(y), f"{what}: {name}[{i}]")


@pytest.mark.parametrize("with_mtp", [True, False], ids=["mtp-block", "no-mtp-block"])
@pytest.mark.parametrize("hidden", [False, True], ids=["logits", "hidden"])
def test_qwen35_graph_replay_equals_eager_at_every_width(models, gpu_backend, with_mtp, hidden):
    """Captured qwen35 passes (the DeltaNet slots found from the device position) replay the eager passes
    bit for bit: logits (and hidden rows), K/V and every ring slot, over passes of every width 1..16 that
    resume inside the last one, as a speculative decoder's do; the CPU gives the same logits."""
    model = models[with_mtp]
    steps = verify_like_steps(7, SHAPE["n_ctx"])
    ids = list(np.random.default_rng(3).integers(0, model.config.n_vocab, SHAPE["n_ctx"]))
    n_states = GRAPH_MAX_ROWS + 1  # a pass resumes after any row of the last one
    graphed = Transformer(model, gpu_backend, graphs=True)
    g_out, g_cache = run_passes(graphed, steps, ids, n_states, hidden)
    e_out, e_cache = run_passes(Transformer(model, gpu_backend, graphs=False), steps, ids, n_states, hidden)
    c_out, _ = run_passes(Transformer(model, CpuBackend()), steps, ids, n_states, hidden)
    assert graphed.graphs.captured == GRAPH_MAX_ROWS
    for i, ((pos, w), g, e, c) in enumerate(zip(steps, g_out, e_out, c_out)):
        for j in range(len(g)):
            assert_bits_equal(g[j], e[j], f"pass {i} ({w} rows at {pos}), output {j}: graph vs eager")
            assert_bits_equal(g[j], c[j], f"pass {i} ({w} rows at {pos}), output {j}: graph vs CPU")
    assert_caches_equal(gpu_backend, g_cache, e_cache, "graph vs eager")


def test_qwen35_mtp_passes_replay_equal_eager(models, gpu_backend):
    """The MTP block's passes (forward(..., mtp_from=hidden rows)) are captured too: replays of every width
    1..16, with hidden rows that change between replays, equal eager passes and the CPU's (logits, the
    block's hidden row and its K/V)."""
    model = models[True]
    n_ctx, rows_max = SHAPE["n_ctx"], GRAPH_MAX_ROWS
    rng = np.random.default_rng(11)
    ids = list(rng.integers(0, model.config.n_vocab, n_ctx))
    graphed = Transformer(model, gpu_backend, graphs=True)
    tfs = (graphed, Transformer(model, gpu_backend, graphs=False), Transformer(model, CpuBackend()))
    steps, pos = [], 0
    for w in [w for w in range(1, rows_max + 1) for _ in range(2)] + [1] * 10:
        steps.append((pos, w))
        pos += w
    results = []
    for tf in tfs:
        cache = tf.new_cache(n_ctx)
        _, hidden = tf.forward(cache, ids[: pos + rows_max], 0, hidden=True)  # the model's hidden rows (eager)
        hidden = tf.be.to_host(hidden)
        out = []
        for p, w in steps:
            before = np.concatenate([np.zeros((1, hidden.shape[1]), F32), hidden])[p : p + w]  # h of p-1 ..
            logits, h = tf.forward(cache, ids[p : p + w], p, mtp_from=tf.be.asarray(before))
            out.append((tf.be.to_host(logits).copy(), tf.be.to_host(h).copy()))
        results.append((out, cache))
    assert graphed.graphs.captured == rows_max
    (g_out, g_cache), (e_out, e_cache), (c_out, _) = results
    for i, ((p, w), g, e, c) in enumerate(zip(steps, g_out, e_out, c_out)):
        for j, what in enumerate(("logits", "hidden")):
            assert_bits_equal(g[j], e[j], f"MTP pass {i} ({w} rows at {p}): {what}, graph vs eager")
            assert_bits_equal(g[j], c[j], f"MTP pass {i} ({w} rows at {p}): {what}, graph vs CPU")
    assert_caches_equal(gpu_backend, g_cache, e_cache, "MTP graph vs eager")


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
@pytest.mark.parametrize("kind", ["ngram", "layerskip", "mtp"])
def test_tiny_qwen35_speculative_equals_greedy_on_gpu(trio, kind, graphs):
    cpu, graphed, eager = trio
    gpu = graphed if graphs else eager
    prompt = [1, 2, 3, 1, 2, 3, 1]
    greedy = generate(gpu, prompt, 40, keep_logits=True)
    for _ in range(2):  # the second run reuses the first one's cache storage and graphs
        spec_result = speculative_generate(gpu, prompt, 40, drafter=make_drafter(kind, gpu), draft_max=6,
                                           keep_logits=True)
        assert spec_result.ids == greedy.ids
        for i, (a, b) in enumerate(zip(spec_result.logits, greedy.logits)):
            assert_bits_equal(np.asarray(a), np.asarray(b), f"{kind}: logits of token {i}")
    assert generate(cpu, prompt, 40).ids == greedy.ids


def test_qwen35_graphs_keep_the_state_checks(trio):
    """With graphs, a pass whose recurrent state is no longer held still raises UsageError (checked on the
    host before the replay), and the refused pass leaves the cache as it was: the next right pass equals
    the eager one. A cache whose storage is reused starts with no states held."""
    _, graphed, eager = trio
    ids = [5, 9, 100, 7, 33, 8, 250, 11, 40, 77]
    cache = graphed.new_cache(32, n_states=2)
    for _ in range(2):  # the second pass of 6 rows replays the graph the first recorded
        graphed.forward(cache, ids[:6], 0)
    with pytest.raises(UsageError, match="no longer held"):
        graphed.forward(cache, ids[3:5], 3)  # the state after position 2 was overwritten (a captured width)
    got = graphed.be.to_host(graphed.forward(cache, ids[6:8], 6))
    e_cache = eager.new_cache(32, n_states=2)
    eager.forward(e_cache, ids[:6], 0)
    assert_bits_equal(got, eager.be.to_host(eager.forward(e_cache, ids[6:8], 6)), "after the refused pass")
    del cache
    reused = graphed.new_cache(32, n_states=2)  # takes the freed storage
    with pytest.raises(UsageError, match="no longer held"):
        graphed.forward(reused, ids[3:5], 3)  # positions 0..2 never ran in this cache
    with pytest.raises(UsageError, match="mtp_from"):
        graphed.forward(reused, ids[:2], 0, mtp_from=graphed.be.zeros((3, SHAPE["n_embd"])))


def test_qwen35_chained_greedy_equals_eager_and_keeps_the_state_bookkeeping(trio):
    """generate() chains qwen35's greedy steps on the device too (PassGraphs.greedy_steps): the tokens and
    stop reasons of eager decoding and of the CPU. The ring bookkeeping records every step the chain ran,
    the one queued past the last token read included: continuing after a full chain equals eager decoding;
    after a chain closed early, continuing from the last token read equals eager decoding, and going back to
    a state the run-ahead step overwrote is refused."""
    cpu, graphed, eager = trio
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = generate(eager, prompt, 40, eog_ids=())
    assert want.ids == generate(cpu, prompt, 40, eog_ids=()).ids
    for _ in range(2):  # the second run replays the chain recorded by the first
        got = generate(graphed, prompt, 40, eog_ids=())
        assert (got.ids, got.stop_reason, got.stats["n_passes"]) == (want.ids, want.stop_reason, 39)
    stop = want.ids[6]
    got = generate(graphed, prompt, 40, eog_ids=[stop])
    assert got.ids == want.ids[: want.ids.index(stop) + 1] and got.stop_reason == "eog"
    whole = generate(graphed, prompt, -1, eog_ids=())
    assert whole.stop_reason == "context" and whole.ids == generate(eager, prompt, -1, eog_ids=()).ids

    n = len(prompt)
    cache = graphed.new_cache(64, n_states=2)
    graphed.forward(cache, prompt, 0)
    steps = [int(ids[0]) for ids, _ in graphed.graphs.greedy_steps(cache, want.ids[0], n, 5)]
    assert steps == want.ids[1:6]
    after = graphed.be.to_host(graphed.forward(cache, [steps[-1]], n + 5))  # continues the state after n+4
    e_cache = eager.new_cache(64, n_states=2)
    eager.forward(e_cache, prompt + want.ids[:5], 0)
    assert_bits_equal(after, eager.be.to_host(eager.forward(e_cache, [steps[-1]], n + 5)), "after a chain")
    cache = graphed.new_cache(64, n_states=2)
    graphed.forward(cache, prompt, 0)
    chain = graphed.graphs.greedy_steps(cache, want.ids[0], n, 10)
    kept = [int(next(chain)[0][0]) for _ in range(3)]
    chain.close()  # steps for positions n .. n+3 ran (one queued past the last read); the ring holds n+2, n+3
    assert kept == want.ids[1:4]
    with pytest.raises(UsageError, match="no longer held"):
        graphed.forward(cache, [kept[-2]], n + 2)  # needs the state after n+1, overwritten by the step at n+3
    after = graphed.be.to_host(graphed.forward(cache, [kept[-1]], n + 3))  # the state after n+2 is held
    e_cache = eager.new_cache(64, n_states=2)
    eager.forward(e_cache, prompt + want.ids[:3], 0)
    assert_bits_equal(after, eager.be.to_host(eager.forward(e_cache, [kept[-1]], n + 3)), "after a closed chain")
