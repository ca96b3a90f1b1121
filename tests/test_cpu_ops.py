"""The compiled small operations of the CPU backend (refspec/cpu_ops.py) give their refspec.spec twins' bits:
quantization (ties at x.5 after scaling, zeros, subnormals, extremes, infinities, NaN, all-equal blocks),
RMSNorm (widths off the 32 lanes, overflow and underflow of the squares), silu_mul (exp's cut-offs), RoPE and
its KV-cache write; each in the spec's order (values built so that another order changes the bits), in
binary32 (no float64 promotion, no FMA in the machine code)."""
import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from refspec import cpu_ops, spec
from refspec.errors import UsageError
from refspec.testing import strategies as rst
from bits import assert_bits_equal

F32 = np.float32
TINY = F32(np.finfo(F32).tiny)  # the smallest normal binary32
EXTREMES = np.array([0.0, -0.0, 1e-45, -1e-45, 3e-39, float(TINY), 1e-37, 4e-37, 1.0, -1.0, 3.4028235e38,
                     -3.4028235e38, 1e19, np.inf, -np.inf, np.nan], F32)


def draw_rows(rng, rows: int, width: int, special: bool) -> np.ndarray:
    """Activation rows: normal values at a random magnitude; with `special`, extremes scattered in, some
    blocks all one value, and some blocks whose values sit exactly on (or one ULP off) the quantizer's
    rounding points (k + 0.5 after scaling by 127 / amax)."""
    x = (rng.standard_normal((rows, width)) * rng.choice([1e-40, 1e-30, 1e-3, 1.0, 1e4, 1e30])).astype(F32)
    if special:
        pick = rng.random(x.shape) < 0.05
        x[pick] = rng.choice(EXTREMES, int(pick.sum()))
        for r in range(rows):
            for b in range(width // 32):
                kind = rng.integers(0, 4)
                block = x[r, 32 * b : 32 * b + 32]
                if kind == 1:  # all equal (amax = every value)
                    block[:] = rng.choice(EXTREMES[:12])
                elif kind == 2:  # ties: amax 127 * 2**e gives d = 2**e, values (k + 0.5) * 2**e scale exactly
                    e = int(rng.integers(-140, 100))
                    scale = np.ldexp(1.0, e)
                    block[:] = ((rng.integers(-127, 127, 32) + 0.5) * scale).astype(F32)
                    block[0] = F32(127 * scale) * rng.choice([1, -1])
                    off = rng.random(32) < 0.3  # one ULP either side of a tie
                    block[off] = np.nextafter(block[off], rng.choice([-np.inf, np.inf]) * np.ones(int(off.sum()), F32))
                    block[0] = F32(127 * scale)
    return x


def check_quantized(got, want, what):
    assert_bits_equal(got[0], want[0], f"{what}: quants")
    assert_bits_equal(got[1], want[1], f"{what}: scales")


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 6), blocks=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), special=st.booleans())
def test_quantize_equals_spec(rows, blocks, seed, special):
    x = draw_rows(np.random.default_rng(seed), rows, 32 * blocks, special)
    with np.errstate(all="ignore"):
        want = spec.quantize_q8_0(x)
    check_quantized(cpu_ops.quantize_q8_0(x), want, f"R={rows} nb={blocks}")


@settings(max_examples=40, deadline=None)
@given(x=rst.activations(cols=rst.block_widths(40)))
def test_quantize_equals_spec_on_the_testing_strategies(x):
    check_quantized(cpu_ops.quantize_q8_0(x), spec.quantize_q8_0(x), "activations")


def test_quantize_rounds_ties_away_from_zero_and_the_float32_just_below_a_half_down():
    """Block amax 127: d = 1, values k + 0.5 must round away from zero; 0.49999997 (the float32 below 0.5)
    must give 0: rounding |v| + 0.5 in binary32 would give 1.0 and round it up."""
    below_half = np.nextafter(F32(0.5), F32(0))
    x = np.zeros((1, 64), F32)
    x[0, 0], x[0, 32] = 127, 127
    x[0, 1:5] = [0.5, -0.5, 126.5, -126.5]
    x[0, 5:9] = [below_half, -below_half, 1.5, 2.5]
    q, d = cpu_ops.quantize_q8_0(x)
    assert list(q[0, 1:9]) == [1, -1, 127, -127, 0, 0, 2, 3] and d[0, 0] == 1
    assert F32(below_half + F32(0.5)) == 1.0  # why the spec rounds in float64
    check_quantized((q, d), spec.quantize_q8_0(x), "ties")


def test_quantize_of_zeros_infinities_and_nan_blocks():
    x = np.zeros((4, 32), F32)
    x[1, 3] = np.inf
    x[2, 7] = np.nan
    x[3, :] = 2e-38  # inv = 1/d overflows: quants 0, as ggml
    with np.errstate(all="ignore"):
        want = spec.quantize_q8_0(x)
    got = cpu_ops.quantize_q8_0(x)
    check_quantized(got, want, "special blocks")
    assert not got[0].any() and np.isinf(got[1][1, 0]) and np.isnan(got[1][2, 0])


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(1, 200) | st.sampled_from([576, 1536, 4096]),
       seed=st.integers(0, 2**32 - 1), special=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-6, 1e-12, 0.0, 1e-30]))
def test_rmsnorm_equals_spec(rows, width, seed, special, eps):
    rng = np.random.default_rng(seed)
    x = draw_rows(rng, rows, width, special)
    w = (rng.standard_normal(width) * rng.choice([1e-3, 1.0, 1e3])).astype(F32)
    with np.errstate(all="ignore"):
        want = spec.rmsnorm(x, w, eps)
        assert_bits_equal(cpu_ops.rmsnorm(x, w, eps), want, f"R={rows} n={width} eps={eps}")
        if width % 32 == 0:
            check_quantized(cpu_ops.rmsnorm_q8(x, w, eps), spec.quantize_q8_0(want), f"rmsnorm_q8 n={width}")


def test_rmsnorm_over_heads_of_any_leading_shape():
    """qwen3's per-head norm: [R, H, D] normed over D (and a non-contiguous view, as the GEMV output's)."""
    rng = np.random.default_rng(4)
    y = rng.standard_normal((3, 2 * 4 * 40)).astype(F32)
    x = y[:, : 4 * 40].reshape(3, 4, 40)
    w = rng.standard_normal(40).astype(F32)
    assert_bits_equal(cpu_ops.rmsnorm(x, w, 1e-6), spec.rmsnorm(x, w, 1e-6), "per-head")


def differ(a, b) -> bool:
    return bool((np.asarray(a).view(np.uint32) != np.asarray(b).view(np.uint32)).any())


def test_rmsnorm_sums_squares_in_the_lane_order():
    """Rows whose squares give other bits when summed left to right instead of in the lanes' order, and
    rows where x * (inv * w) differs from (x * inv) * w: the compiled norm must give the spec's on both."""
    rng = np.random.default_rng(0)
    eps = F32(1e-5)
    x = (rng.standard_normal((200, 100)) * np.exp(rng.uniform(-6, 6, (200, 100)))).astype(F32)
    w = rng.standard_normal(100).astype(F32)
    want = spec.rmsnorm(x, w, eps)
    seq = np.zeros(200, F32)
    for j in range(100):  # left to right, one binary32 rounding per addition
        seq = (seq + x[:, j] * x[:, j]).astype(F32)
    inv_seq = F32(1) / np.sqrt(seq / F32(100) + eps)
    assert differ(want, (x * inv_seq[:, None]) * w)  # the order of the sum matters for these rows
    inv = F32(1) / np.sqrt(spec.lane_sum(x * x) / F32(100) + eps)
    assert differ(want, x * (inv[:, None] * w))  # and the order of the two products
    assert_bits_equal(cpu_ops.rmsnorm(x, w, eps), want, "lane order")


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), width=st.integers(1, 130), seed=st.integers(0, 2**32 - 1),
       magnitude=st.sampled_from([1e-40, 1e-3, 1.0, 10.0, 90.0, 1e30]), special=st.booleans())
def test_silu_mul_equals_spec(rows, width, seed, magnitude, special):
    rng = np.random.default_rng(seed)
    g = (rng.standard_normal((rows, width)) * magnitude).astype(F32)
    u = (rng.standard_normal((rows, width)) * rng.choice([1e-3, 1.0, 1e30])).astype(F32)
    if special:
        g.flat[rng.integers(0, g.size, 3)] = rng.choice(EXTREMES, 3)
        g.flat[rng.integers(0, g.size, 2)] = rng.choice([88.0, -87.0, 88.00001, -87.00001], 2)
    with np.errstate(all="ignore"):
        want = spec.silu_mul(g, u)
        assert_bits_equal(cpu_ops.silu_mul(g, u), want, f"R={rows} F={width}")
        if width % 32 == 0:
            check_quantized(cpu_ops.silu_mul_q8(g, u), spec.quantize_q8_0(want), "silu_mul_q8")


def test_silu_mul_divides_before_it_multiplies():
    """(g / (1 + exp(-g))) * u, not (g * u) / (1 + exp(-g)): values where the two differ."""
    rng = np.random.default_rng(2)
    g = rng.standard_normal((1, 4096)).astype(F32)
    u = rng.standard_normal((1, 4096)).astype(F32)
    want = spec.silu_mul(g, u)
    other = (g * u) / (F32(1) + spec.exp(-g))
    assert differ(want, other)
    assert_bits_equal(cpu_ops.silu_mul(g, u), want, "order")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), heads=st.integers(1, 4), dim=st.sampled_from([2, 8, 30, 64, 80]),
       rot_part=st.sampled_from([1.0, 0.5, 0.25]), neox=st.booleans(), pos0=st.integers(0, 20),
       seed=st.integers(0, 2**32 - 1))
def test_rope_and_rope_kv_equal_spec(rows, heads, dim, rot_part, neox, pos0, seed):
    rng = np.random.default_rng(seed)
    n_rot = max(2, int(dim * rot_part) // 2 * 2)
    cos, sin = spec.rope_table(pos0 + rows + 3, n_rot, 10000.0)
    q = (rng.standard_normal((rows, 2 * heads, dim)) * 100).astype(F32)
    k = (rng.standard_normal((rows, heads, dim)) * 100).astype(F32)
    v = rng.standard_normal((rows, heads, dim)).astype(F32)
    assert_bits_equal(cpu_ops.rope(q, pos0, cos, sin, neox), spec.rope(q, pos0, cos, sin, neox), "rope")
    caches = [np.full((heads, pos0 + rows + 3, dim), 7.0, F32) for _ in range(4)]
    want_q = spec.rope(q, pos0, cos, sin, neox)  # FusedFromParts.rope_kv, written with the spec's ops
    caches[0][:, pos0 : pos0 + rows] = spec.rope(k, pos0, cos, sin, neox).transpose(1, 0, 2)
    caches[1][:, pos0 : pos0 + rows] = v.transpose(1, 0, 2)
    got_q = cpu_ops.rope_kv(q, k, v, caches[2], caches[3], pos0, cos, sin, neox)
    assert_bits_equal(got_q, want_q, "rope_kv q")
    assert_bits_equal(caches[2], caches[0], "k cache (other positions untouched)")
    assert_bits_equal(caches[3], caches[1], "v cache")


def test_rope_rounds_each_product_before_the_difference():
    """a * c - b * s with two roundings before the subtraction (no FMA): values where a fused
    multiply-subtract would differ, computed in float64 for the fused reference."""
    rng = np.random.default_rng(1)
    cos, sin = spec.rope_table(64, 64, 10000.0)
    x = rng.standard_normal((64, 1, 64)).astype(F32)
    want = spec.rope(x, 0, cos, sin, False)
    a, b = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    fused = (a * cos[:, None, :] - (b * sin[:, None, :]).astype(F32)).astype(F32)  # one rounding less
    assert (fused != want[..., 0::2]).any()
    assert_bits_equal(cpu_ops.rope(x, 0, cos, sin, False), want, "no FMA")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 mnemonics")
def test_machine_code_has_no_fma_and_no_float64_outside_the_rounding():
    """No fused multiply-add in any loop; no conversion to float64 in the norm, silu and RoPE loops (the
    quantizer's rounding is the spec's float64 step, so it is allowed there). Fresh uncached copies: numba
    cannot show the machine code of functions loaded from its cache."""
    x = np.ones((2, 64), F32)
    w = np.ones(64, F32)
    t = np.ones((4, 2), F32)
    q3 = np.ones((1, 2, 8), F32)
    cache = np.zeros((2, 4, 8), F32)
    loops = {"quantize": (cpu_ops._quantize, (x,), True),
             "rmsnorm": (cpu_ops._rmsnorm, (x, w, F32(1e-5)), False),
             "rmsnorm_q8": (cpu_ops._rmsnorm_q8, (x, w, F32(1e-5)), True),
             "silu_mul": (cpu_ops._silu_mul, (x, x), False),
             "silu_mul_q8": (cpu_ops._silu_mul_q8, (x, x), True),
             "rope_kv": (cpu_ops._rope_kv, (q3, q3[:, :2], q3[:, :2], cache, cache.copy(), 0, t, t, True), False)}
    for name, (kernel, args, float64_allowed) in loops.items():
        fresh = njit(nogil=True, error_model="numpy")(kernel.py_func)
        fresh(*args)
        asm = "\n".join(fresh.inspect_asm().values())
        assert "vmulss" in asm or "vmulps" in asm, f"{name}: no float multiply: not the loop's code"
        assert not any(op in asm for op in ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub")), f"{name}: FMA"
        if not float64_allowed:
            assert not any(op in asm for op in ("cvtss2sd", "cvtps2pd", "mulsd", "addsd", "divsd")), \
                f"{name}: float64 arithmetic"


def test_misuse_is_a_usage_error():
    with pytest.raises(UsageError):
        cpu_ops.quantize_q8_0(np.zeros((2, 33), F32))
    with pytest.raises(UsageError):
        cpu_ops.rmsnorm(np.zeros((2, 8), F32), np.zeros(7, F32), 1e-5)
    with pytest.raises(UsageError):
        cpu_ops.silu_mul_q8(np.zeros((2, 32), F32), np.zeros((2, 64), F32))
    cos = np.zeros((4, 2), F32)
    with pytest.raises(UsageError):
        cpu_ops.rope(np.zeros((2, 1, 4), F32), 3, cos, cos, False)  # positions 3, 4 past the table
    cache = np.zeros((1, 4, 4), F32)
    with pytest.raises(UsageError):
        cpu_ops.rope_kv(np.zeros((2, 1, 4), F32), np.zeros((2, 2, 4), F32), np.zeros((2, 2, 4), F32),
                        cache, cache, 0, cos, cos, False)  # 2 kv heads, the cache holds 1


def test_fused_loops_only_where_the_parts_are_the_cpu_backends_own():
    """CpuBackend runs rmsnorm_q8, silu_mul_q8 and rope_kv as single compiled loops; a subclass that replaces
    a part (a backend modelled on the CPU one, differing in one op) gets the composition of its parts."""
    from refspec.backends import CpuBackend

    class ZeroSilu(CpuBackend):
        @staticmethod
        def silu_mul(gate, up):
            return np.zeros_like(gate)

    assert CpuBackend().silu_mul_q8 is cpu_ops.silu_mul_q8 and CpuBackend().rope_kv is cpu_ops.rope_kv
    g = np.ones((2, 64), F32)
    q, d = ZeroSilu().silu_mul_q8(g, g)
    assert not q.any() and not d.astype(F32).any()
    assert ZeroSilu().rmsnorm_q8 is cpu_ops.rmsnorm_q8  # its parts are still CpuBackend's
