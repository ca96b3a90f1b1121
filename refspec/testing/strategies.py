"""Hypothesis strategies for the inputs of refspec's operations: what a property test of another backend
(or of a change to refspec) should draw. Values include zeros, -0.0, rounding ties, subnormals and extremes;
sizes are deliberately not multiples of 32 lanes, of a GPU tile, or of the attention chunk.

    from hypothesis import given
    from refspec.testing import strategies as rst

    @given(rst.gemv_inputs())
    def test_my_gemv(case):
        w, xq, xd = case
        assert_bits_equal(my_backend_gemv(w, xq, xd), refspec.spec.q8_gemv(w, xq, xd))

Needs hypothesis (pip install hypothesis; refspec's `test` extra has it).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refspec import spec
from refspec.model import ARCHITECTURES, QK8_0, Q8Matrix

F32 = np.float32
SPECIAL_F32 = (0.0, -0.0, 1e-45, -1e-45, 1e-40, -3e-39, 1.1754944e-38, 0.5, -0.5, 2.5, -3.5, 1.0, -1.0, 127.0,
               -127.0, 65504.0, 1e-30, 1e19, -1e19)  # zeros, subnormals, the smallest normal, ties, extremes
SPECIAL_F16 = (0.0, 6e-08, 6.1e-05, 0.5, 1.0, 30.0, 65504.0)  # fp16 scales: zero, subnormal, normal, max


def f32_values(max_abs: float = 1e19):
    """One binary32 value: any finite float up to max_abs in magnitude, or one of the special values."""
    bound = float(F32(max_abs))  # hypothesis wants bounds representable in binary32
    return st.floats(-bound, bound, width=32) | st.sampled_from([v for v in SPECIAL_F32 if abs(v) <= max_abs])


def activations(rows=st.integers(1, 17), cols=st.integers(1, 300), max_abs: float = 1e19):
    """float32 [R, C] activations with the special values; whole 32-blocks of one special value sometimes."""
    @st.composite
    def draw(d):
        r, c = d(rows), d(cols)
        x = d(hnp.arrays(F32, (r, c), elements=f32_values(max_abs)))
        if c >= QK8_0 and d(st.booleans()):
            x[:, :QK8_0] = d(st.sampled_from([v for v in SPECIAL_F32 if abs(v) <= max_abs]))
        return x
    return draw()


def block_widths(max_blocks: int = 80):
    """K = 32 * nb: one block up to more than 32 lanes' worth, mostly not a multiple of a 64, 128 or 256 tile."""
    return st.integers(1, max_blocks).map(lambda nb: nb * QK8_0)


@st.composite
def q8_matrices(draw, n=st.integers(1, 40), k=block_widths()):
    """A Q8_0 matrix [N, K] whose quants include -127, 0 and 127 and whose fp16 scales include zero,
    subnormal and large values."""
    rows, cols = draw(n), draw(k)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, size=(rows, cols), dtype=np.int16).astype(np.int8)
    q.flat[rng.integers(0, q.size, size=3)] = draw(st.sampled_from([-127, 0, 127]))
    d = rng.uniform(0.001, 0.05, size=(rows, cols // QK8_0)).astype(np.float16)
    d.flat[rng.integers(0, d.size)] = np.float16(draw(st.sampled_from(SPECIAL_F16)))
    return Q8Matrix(q, d)


@st.composite
def gemv_inputs(draw, rows=st.integers(1, 17)):
    """(w, xq, xd): a Q8_0 matrix and R activation rows quantized as the spec quantizes them."""
    w = draw(q8_matrices())
    x = draw(activations(rows=rows, cols=st.just(w.shape[1]), max_abs=1e6))
    xq, xd = spec.quantize_q8_0(x)
    return w, xq, xd


@st.composite
def attention_inputs(draw, rows=st.integers(1, 9), max_pos: int = 600):
    """(q [R, H, D], k_cache [G, T, D], v_cache [G, T, D], pos0): T = pos0 + R, up to past two
    attention chunks; grouped-query head counts; scores spread widely (exp near its limits)."""
    r = draw(rows)
    g = draw(st.sampled_from([1, 2, 3]))
    h = g * draw(st.sampled_from([1, 2, 4]))
    dim = draw(st.sampled_from([8, 16, 24, 64]))
    pos0 = draw(st.integers(0, max_pos - r))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    q = (rng.standard_normal((r, h, dim)) * scale).astype(F32)
    k = rng.standard_normal((g, pos0 + r, dim)).astype(F32)
    v = rng.standard_normal((g, pos0 + r, dim)).astype(F32)
    return q, k, v, pos0


@st.composite
def tiny_model_kwargs(draw, archs=ARCHITECTURES):
    """Keyword arguments of refspec.synthetic.write_model for a tiny random model of any architecture: odd
    head counts, grouped-query attention, partial RoPE (qwen3), widths that are small multiples of 32."""
    arch = draw(st.sampled_from(archs))
    n_head_kv = draw(st.integers(1, 3))
    n_head = n_head_kv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([16, 32] if n_head % 2 == 0 else [32]))  # n_head * head_dim: whole blocks
    kwargs = dict(arch=arch, n_layer=draw(st.integers(1, 3)), n_head=n_head, n_head_kv=n_head_kv,
                  head_dim=head_dim, n_embd=QK8_0 * draw(st.integers(1, 4)), n_ff=QK8_0 * draw(st.integers(1, 5)),
                  n_ctx=64, seed=draw(st.integers(0, 2**16)))
    if arch == "qwen3" and draw(st.booleans()):
        kwargs["n_rot"] = head_dim // 2
    return kwargs


@st.composite
def conv1d_inputs(draw, rows=st.integers(1, 9)):
    """(x [R, C], state [C, K-1], w [C, K]) for spec.conv1d_causal: channel counts off 32, 2-5 taps, inputs and
    states with the special values."""
    r, c, taps = draw(rows), draw(st.integers(1, 100)), draw(st.integers(2, 5))
    x = draw(activations(rows=st.just(r), cols=st.just(c), max_abs=1e6))
    state = draw(activations(rows=st.just(c), cols=st.just(taps - 1), max_abs=1e6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return x, state, rng.standard_normal((c, taps)).astype(F32)


@st.composite
def delta_rule_inputs(draw, rows=st.integers(1, 6)):
    """(q, k [R, Hk, D], v [R, Hv, D], decay, beta [R, Hv], state [Hv, D, D]) for spec.delta_rule: q and k
    L2-normalised as qwen35's are, value heads tiled over key heads (Hv a multiple of Hk), head sizes off 32,
    decays from exactly 0 to exactly 1, and a state of any size."""
    r, n_k = draw(rows), draw(st.integers(1, 3))
    n_v, dim = n_k * draw(st.integers(1, 3)), draw(st.sampled_from([8, 16, 24, 48, 64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q, k = (spec.l2norm(rng.standard_normal((r, n_k, dim)).astype(F32), 1e-6) for _ in range(2))
    v = (rng.standard_normal((r, n_v, dim)) * draw(st.sampled_from([0.01, 1.0, 100.0]))).astype(F32)
    decay = rng.uniform(0, 1, (r, n_v)).astype(F32)
    decay.flat[rng.integers(0, decay.size)] = draw(st.sampled_from([0.0, 1.0]))
    beta = rng.uniform(0, 1, (r, n_v)).astype(F32)
    state = (rng.standard_normal((n_v, dim, dim)) * draw(st.sampled_from([0.0, 0.1, 10.0]))).astype(F32)
    return q, k, v, decay, beta, state
