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
from refspec.gpu import gpu_available
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


@given(data=st.data())
def test_conv1d_equals_spec_and_keeps_each_rows_state(be, data):
    rng = rng_from(data)
    rows, channels = data.draw(st.integers(1, 20), label="rows"), data.draw(st.integers(1, 300), label="channels")
    taps = data.draw(st.integers(1, 6) | st.integers(30, 40), label="taps")
    n_states = data.draw(st.integers(1, 20), label="n_states")
    pos0 = data.draw(st.integers(0, 50), label="pos0")
    x = floats(rng, (rows, channels + 5), data.draw(STYLES, label="x"))  # a column slice, as from a stack
    w = floats(rng, (channels, taps), "normal")
    ring = floats(rng, (n_states, channels, taps - 1), "normal")
    read = None if pos0 == 0 else (pos0 - 1) % n_states
    writes = [(pos0 + r) % n_states for r in range(rows)]
    cpu_ring = ring.copy()
    with np.errstate(all="ignore"):
        want = CpuBackend.conv1d_causal(x[:, 3 : 3 + channels], w, cpu_ring, read, writes)
    gpu_ring = be.asarray(ring)
    got = be.conv1d_causal(be.asarray(x)[:, 3 : 3 + channels], be.asarray(w), gpu_ring, read, writes)
    assert_same(be.to_host(got), want, "conv1d", nan_equal=True)
    assert_same(be.to_host(gpu_ring), cpu_ring, "conv1d states", nan_equal=True)


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
    read = None if pos0 == 0 else (pos0 - 1) % n_states
    writes = [(pos0 + r) % n_states for r in range(rows)]
    cpu_ring = ring.copy()
    with np.errstate(all="ignore"):
        want = CpuBackend.delta_rule(q, k, v, decay, beta, cpu_ring, read, writes)
    gpu_ring = be.asarray(ring)
    got = be.delta_rule(*(be.asarray(t) for t in (q, k, v, decay, beta)), gpu_ring, read, writes)
    assert_same(be.to_host(got), want, "delta rule", nan_equal=True)
    assert_same(be.to_host(gpu_ring), cpu_ring, "delta rule states", nan_equal=True)


# ------------------------------------------------------------------------------------------ whole models
SHAPE = dict(arch="qwen35", n_layer=4, n_embd=64, n_ff=96, n_head=2, n_head_kv=1, head_dim=32, n_ctx=64,
             ssm_d_state=16, ssm_n_k_heads=2, ssm_n_v_heads=4, full_attention_interval=2, n_nextn=1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    model = load(write_model(tmp_path_factory.mktemp("q35") / "q35.gguf", seed=5, **SHAPE))
    from refspec.gpu import GpuBackend

    return Transformer(model, CpuBackend()), Transformer(model, GpuBackend())


def test_tiny_qwen35_gpu_equals_cpu_and_is_batch_invariant(pair):
    cpu, gpu = pair
    ids = [5, 9, 100, 7, 33, 8, 250, 11, 40, 77, 3]
    c_cache, g_cache, s_cache = cpu.new_cache(32), gpu.new_cache(32), gpu.new_cache(32)
    for start, stop in ((0, 4), (4, 5), (5, 11)):
        want = cpu.forward(c_cache, ids[start:stop], start)
        got = gpu.be.to_host(gpu.forward(g_cache, ids[start:stop], start))
        assert_bits_equal(got, want, f"logits of positions {start}..{stop - 1}")
        for j, p in enumerate(range(start, stop)):
            one = gpu.be.to_host(gpu.forward(s_cache, ids[p : p + 1], p))
            assert_bits_equal(one[0], got[j], f"position {p} alone")


@pytest.mark.parametrize("kind", ["ngram", "layerskip", "mtp"])
def test_tiny_qwen35_speculative_equals_greedy_on_gpu(pair, kind):
    _, gpu = pair
    if kind == "mtp" and gpu.weights.mtp is None:
        pytest.skip("GpuBackend.upload_weights does not upload the MTP block yet")
    prompt = [1, 2, 3, 1, 2, 3, 1]
    greedy = generate(gpu, prompt, 20, keep_logits=True)
    spec_result = speculative_generate(gpu, prompt, 20, drafter=make_drafter(kind, gpu), draft_max=6,
                                       keep_logits=True)
    assert spec_result.ids == greedy.ids
    for a, b in zip(spec_result.logits, greedy.logits):
        assert_bits_equal(np.asarray(a), np.asarray(b), "logits")
