"""The NumPy spec against independent scalar definitions, ggml's quantizer, and its own invariances."""
import gguf
import numpy as np
import pytest
from gguf import quants
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refspec import spec
from refspec.backends import CpuBackend, CpuQ8
from refspec.errors import NumericsError
from refspec.model import Q8Matrix

from bits import assert_bits_equal

F32 = np.float32
SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, 1e-45, -1e-45, 1e-40, 1.17549435e-38, 3.4028235e38, -3.4028235e38,
           65504.0, 65520.0, 1e-8, 127.0, -127.0]
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(SPECIAL)


def f32_arrays(shape):
    return hnp.arrays(np.float32, shape, elements=finite_f32)


# ------------------------------------------------------------------------------- scalar definitions
def lane_sum_scalar(values) -> F32:
    """SPEC.md "Reductions", one binary32 operation at a time."""
    lanes = [F32(0.0)] * spec.LANES
    for i, v in enumerate(values):
        lanes[i % spec.LANES] = F32(lanes[i % spec.LANES] + F32(v))
    width = spec.LANES // 2
    while width >= 1:
        lanes = [F32(lanes[i] + lanes[i + width]) for i in range(width)]
        width //= 2
    return lanes[0]


@given(st.integers(1, 300).flatmap(lambda n: f32_arrays((n,))))
def test_lane_sum_matches_scalar_definition(x):
    with np.errstate(over="ignore", invalid="ignore"):
        assert_bits_equal(spec.lane_sum(x), np.asarray(lane_sum_scalar(x), F32), "lane_sum")


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 127, 128, 200, 600])
def test_lane_sum_of_negative_zeros_is_positive_zero(n):
    x = np.full((2, n), -0.0, F32)
    x[1, n // 2] = 0.0  # one +0.0 among them
    for axis_x in (x, x.T.copy()):
        got = spec.lane_sum(axis_x, axis=-1 if axis_x is x else 0)
        assert_bits_equal(got, np.zeros(2, F32), f"lane_sum of zeros, n={n}")
    assert_bits_equal(spec.chunked_sum(np.full(n, -0.0, F32)), np.asarray(F32(0)), "chunked_sum of -0.0")


@given(st.integers(1, 5), st.integers(1, 100), st.data())
def test_lane_sum_rows_are_independent(rows, n, data):
    x = data.draw(hnp.arrays(np.float32, (rows, n), elements=st.floats(-1e6, 1e6, width=32)))
    whole = spec.lane_sum(x)
    for r in range(rows):
        assert_bits_equal(spec.lane_sum(x[r : r + 1])[0], whole[r], f"row {r}")


@given(st.integers(1, 700).flatmap(lambda n: hnp.arrays(np.float32, (n,), elements=st.floats(0, 1e3, width=32))))
def test_chunked_sum_matches_scalar_definition(x):
    total = F32(0)
    for start in range(0, len(x), spec.ATTN_CHUNK):
        total = F32(total + lane_sum_scalar(x[start : start + spec.ATTN_CHUNK]))
    assert_bits_equal(spec.chunked_sum(x), np.asarray(total, F32), "chunked_sum")


# ------------------------------------------------------------------------------------------------ exp
def test_exp_accuracy_and_special_values():
    x = np.linspace(-87, 88, 400_001, dtype=F32)
    got = spec.exp(x).astype(np.float64)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) < 2 * 2.0**-23  # within 2 ULP of the true value
    special = spec.exp(np.array([-np.inf, -1000, -87.5, 0.0, -0.0, 88.5, np.inf, np.nan], F32))
    assert special[:3].tolist() == [0.0, 0.0, 0.0] and not np.signbit(special[:3]).any()
    assert special[3] == 1.0 and special[4] == 1.0
    assert np.isinf(special[5]) and np.isinf(special[6]) and np.isnan(special[7])


@given(hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-100, 100, width=32)))
def test_exp_is_elementwise(x):
    whole = spec.exp(x)
    for i in range(len(x)):
        assert_bits_equal(spec.exp(x[i : i + 1]), whole[i : i + 1], f"exp element {i}")


# ------------------------------------------------------------------------------------------- quantize
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_quantizer_is_byte_identical_to_gguf(rows, blocks, data):
    x = data.draw(f32_arrays((rows, blocks * 32)))
    if data.draw(st.booleans()):  # whole blocks of one special value: zeros, ties, subnormals
        x[:, :32] = data.draw(st.sampled_from(SPECIAL))
    q, d = spec.quantize_q8_0(x)
    with np.errstate(all="ignore"):
        ref = quants.quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(rows, blocks, 34)
    assert_bits_equal(d, np.ascontiguousarray(ref[:, :, :2]).view(np.float16)[..., 0], "scales")
    assert_bits_equal(q, np.ascontiguousarray(ref[:, :, 2:]).view(np.int8).reshape(rows, -1), "quants")


# ----------------------------------------------------------------------------------------------- gemv
def random_q8(rng, n, k):
    return Q8Matrix(rng.integers(-128, 128, (n, k), dtype=np.int8),
                    (rng.standard_normal((n, k // 32)) * 0.01).astype(np.float16))


def gemv_scalar(w: Q8Matrix, xq, xd, r, n) -> F32:
    nb = w.q.shape[1] // 32
    terms = []
    for b in range(nb):
        dot = int(np.dot(w.q[n, 32 * b : 32 * b + 32].astype(np.int64), xq[r, 32 * b : 32 * b + 32].astype(np.int64)))
        terms.append(F32(F32(F32(w.d[n, b]) * F32(xd[r, b])) * F32(dot)))
    return lane_sum_scalar(terms)


@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_gemv_matches_scalar_definition(rows, n, blocks, seed):
    rng = np.random.default_rng(seed)
    w = random_q8(rng, n, blocks * 32)
    xq, xd = spec.quantize_q8_0(rng.standard_normal((rows, blocks * 32)).astype(F32))
    y = spec.q8_gemv(w, xq, xd)
    for r in range(rows):
        for j in {0, n // 2, n - 1}:
            assert_bits_equal(y[r, j], np.asarray(gemv_scalar(w, xq, xd, r, j), F32), f"y[{r},{j}]")


@given(st.integers(1, 17), st.integers(1, 300), st.integers(1, 50), st.integers(0, 2**32 - 1), st.booleans())
def test_cpu_backend_gemv_equals_spec_and_is_batch_invariant(rows, n, blocks, seed, resident):
    rng = np.random.default_rng(seed)
    w = random_q8(rng, n, blocks * 32)
    xq, xd = spec.quantize_q8_0(rng.standard_normal((rows, blocks * 32)).astype(F32))
    be = CpuBackend()
    be.SLAB_BYTES = int(rng.integers(128, 1 << 16))  # small slabs exercise the slab arithmetic
    other = random_q8(rng, int(rng.integers(1, 40)), blocks * 32)
    first, second = CpuQ8([w, other], resident).parts  # a stack of two matrices, as Q/K/V are uploaded
    y = be.q8_gemv(first, xq, xd)
    y_many, y_other = be.q8_gemv_many([first, second], xq, xd)
    assert_bits_equal(y_many, y, "stacked gemv")
    assert_bits_equal(y_other, spec.q8_gemv(other, xq, xd), "second matrix of the stack")
    assert_bits_equal(y, spec.q8_gemv(w, xq, xd), "cpu gemv vs spec")
    for r in range(rows):
        assert_bits_equal(spec.q8_gemv(w, xq[r : r + 1], xd[r : r + 1])[0], y[r], f"row {r} alone")


# ------------------------------------------------------------------------------------- rows are independent
@given(st.integers(1, 9), st.sampled_from([(4, 2, 8), (6, 3, 16), (2, 1, 64), (4, 4, 32)]), st.integers(0, 40),
       st.integers(0, 2**32 - 1), st.booleans())
def test_attention_rope_rmsnorm_are_batch_invariant(rows, heads, pos0, seed, neox):
    n_head, n_kv, dim = heads
    rng = np.random.default_rng(seed)
    n_pos = pos0 + rows + 3
    cos, sin = spec.rope_table(n_pos, dim, 10000.0)
    q = rng.standard_normal((rows, n_head, dim)).astype(F32)
    k_cache = rng.standard_normal((n_kv, n_pos, dim)).astype(F32)  # positions past the rows hold garbage
    v_cache = rng.standard_normal((n_kv, n_pos, dim)).astype(F32)
    w = rng.standard_normal(dim).astype(F32)
    qn = spec.rope(spec.rmsnorm(q, w, 1e-6), pos0, cos, sin, neox)
    out = spec.attention(qn, k_cache, v_cache, pos0)
    for r in range(rows):
        one = spec.rope(spec.rmsnorm(q[r : r + 1], w, 1e-6), pos0 + r, cos, sin, neox)
        assert_bits_equal(one[0], qn[r], f"rope(rmsnorm) row {r}")
        assert_bits_equal(spec.attention(one, k_cache, v_cache, pos0 + r)[0], out[r], f"attention row {r}")


def test_attention_chunks_match_a_scalar_definition():
    rng = np.random.default_rng(3)
    n_pos, dim = spec.ATTN_CHUNK + 37, 8  # more than one chunk
    q = rng.standard_normal((1, 1, dim)).astype(F32)
    k = rng.standard_normal((1, n_pos, dim)).astype(F32)
    v = rng.standard_normal((1, n_pos, dim)).astype(F32)
    got = spec.attention(q, k, v, n_pos - 1)[0, 0]
    scale = F32(F32(1) / np.sqrt(F32(dim)))
    s = np.array([F32(lane_sum_scalar(q[0, 0] * k[0, t]) * scale) for t in range(n_pos)], F32)
    e = spec.exp(s - s.max())

    def chunked(vals):
        total = F32(0)
        for a in range(0, n_pos, spec.ATTN_CHUNK):
            total = F32(total + lane_sum_scalar(vals[a : a + spec.ATTN_CHUNK]))
        return total

    denom = chunked(e)
    want = np.array([F32(chunked(e * v[0, :, j]) / denom) for j in range(dim)], F32)
    assert_bits_equal(got, want, "attention")


# --------------------------------------------------------------------------------------------- others
def test_argmax_breaks_ties_low_and_rejects_nan():
    assert spec.argmax(np.array([[1, 3, 3, 2], [5, 5, 5, 5]], F32)).tolist() == [1, 0]
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(NumericsError):
            spec.argmax(np.array([[0, bad, 1]], F32))


@given(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_embed_is_exact_dequantization(rows, blocks, seed):
    rng = np.random.default_rng(seed)
    w = random_q8(rng, 50, blocks * 32)
    ids = rng.integers(0, 50, rows)
    got = spec.embed(w, ids)
    want = w.q[ids].astype(np.float64) * np.repeat(w.d[ids].astype(np.float64), 32, axis=1)
    assert_bits_equal(got, want.astype(F32), "embed")  # d * q is exact in binary32


def test_silu_mul_definition():
    g = np.array([-100, -1, -0.0, 0, 0.5, 3, 100], F32)
    u = np.array([2, 2, 2, 2, 2, 2, 2], F32)
    want = np.array([(gi / (F32(1) + spec.exp(np.array([-gi], F32))[0])) * ui for gi, ui in zip(g, u)], F32)
    assert_bits_equal(spec.silu_mul(g, u), want, "silu_mul")
