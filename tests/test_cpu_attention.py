"""The compiled CPU attention (refspec/cpu_attention.py) gives refspec.spec.attention's bits: rows, heads, head
dims off the 32 lanes, positions across the 256-position chunks, large scores (exp's overflow and underflow
ranges), zeros and NaN; its exp is spec.exp bit for bit."""
import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from refspec import cpu_attention, spec
from refspec.errors import UsageError
from bits import assert_bits_equal

F32 = np.float32


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3), (8, 2)]),
       dim=st.sampled_from([1, 8, 31, 32, 40, 64, 80, 128, 256]), pos0=st.integers(0, 600),
       magnitude=st.sampled_from([0.0, 1e-3, 1.0, 8.0, 40.0]), seed=st.integers(0, 2**32 - 1))
def test_compiled_attention_equals_spec(rows, heads, dim, pos0, magnitude, seed):
    n_head, n_kv = heads
    rng = np.random.default_rng(seed)
    n_pos = pos0 + rows + int(rng.integers(0, 5))  # positions past the rows hold garbage
    q = (rng.standard_normal((rows, n_head, dim)) * magnitude).astype(F32)
    k = (rng.standard_normal((n_kv, n_pos, dim)) * magnitude).astype(F32)
    v = rng.standard_normal((n_kv, n_pos, dim)).astype(F32)
    k[rng.random(k.shape) < 0.1] = 0.0
    with np.errstate(all="ignore"):
        want = spec.attention(q, k, v, pos0)
    assert_bits_equal(cpu_attention.attention(q, k, v, pos0), want, f"R={rows} H/G={heads} D={dim} pos0={pos0}")


def test_nan_scores_give_nan_rows_as_the_spec():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((3, 2, 32)).astype(F32)
    k = rng.standard_normal((1, 8, 32)).astype(F32)
    v = rng.standard_normal((1, 8, 32)).astype(F32)
    k[0, 4, 7] = np.nan  # rows seeing position 4 (pos0 2: rows 2 and later) become NaN
    with np.errstate(all="ignore"):
        want = spec.attention(q, k, v, 2)
    got = cpu_attention.attention(q, k, v, 2)
    assert np.isnan(got[2]).all() and not np.isnan(got[:2]).any()
    assert_bits_equal(got, want, "NaN scores")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_row_never_depends_on_the_rows_after_it(bad):
    """Batch invariance with non-finite values: the later rows of a pass wrote keys and values that are
    infinite or NaN (as a row that overflowed would); every earlier row still has the bits of the same row
    run alone, in the spec (which must not add +0 * inf for the positions a row does not see) and in the
    compiled attention."""
    rng = np.random.default_rng(5)
    rows, pos0 = 6, 300  # the rows span the end of the first 256-position chunk and more
    q = rng.standard_normal((rows, 4, 40)).astype(F32)
    k = rng.standard_normal((2, pos0 + rows, 40)).astype(F32)
    v = rng.standard_normal((2, pos0 + rows, 40)).astype(F32)
    k[:, pos0 + 3 :] = bad
    v[:, pos0 + 3 :] = bad
    with np.errstate(all="ignore"):
        together = spec.attention(q, k, v, pos0)
        alone = [spec.attention(q[r : r + 1], k, v, pos0 + r)[0] for r in range(rows)]
    assert np.isfinite(together[:3]).all()
    for r in range(rows):
        assert_bits_equal(together[r], alone[r], f"spec, row {r}")
    assert_bits_equal(cpu_attention.attention(q, k, v, pos0), together, "compiled")


@njit
def _exp_all(x, out):
    for i in range(x.size):
        out[i] = cpu_attention._exp(x[i])


def test_exp_equals_spec_exp():
    """Every float32 in [-90, 90] at a stride, the edges of the cut-offs, and random bit patterns."""
    rng = np.random.default_rng(7)
    edges = np.array([88.0, -87.0, np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, -1e-45], F32)
    near = np.concatenate([np.nextafter(edges[:2], F32(np.inf)), np.nextafter(edges[:2], F32(-np.inf))])
    ladder = np.arange(-(1 << 30), 1 << 30, 997, dtype=np.int32).view(F32)  # both signs, every magnitude
    random_bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(F32)
    x = np.concatenate([edges, near, ladder, random_bits, np.linspace(-90, 90, 200_001, dtype=F32)])
    out = np.empty_like(x)
    _exp_all(x, out)
    assert_bits_equal(out, spec.exp(x), "exp")


@njit(nogil=True)
def _attend_all(q, k_cache, v_cache, pos0, scale, out):
    rows, n_head, dim = q.shape
    s = np.empty(pos0 + rows, np.float32)
    lane = np.empty(32, np.float32)
    acc = np.empty((32, dim), np.float32)
    num = np.empty(dim, np.float32)
    for r in range(rows):
        for h in range(n_head):
            cpu_attention._attend(q, k_cache, v_cache, r, h, pos0, scale, out, s, lane, acc, num)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 mnemonics")
def test_machine_code_has_no_fma():
    """numba compiles without fastmath: no fused multiply-add in the attention loop or its exp (the bits
    tests would also catch one where it rounds differently)."""
    q = np.ones((2, 2, 8), F32)
    cache = np.ones((1, 4, 8), F32)
    _attend_all(q, cache, cache, 2, F32(0.5), np.empty_like(q))
    asm = "\n".join(_attend_all.inspect_asm().values())
    assert "vmulss" in asm or "vmulps" in asm, "no float multiply: not the loop's code"
    assert not any(op in asm for op in ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub")), "FMA"


def test_misuse_is_a_usage_error():
    q = np.zeros((2, 4, 8), F32)
    with pytest.raises(UsageError):
        cpu_attention.attention(q, np.zeros((2, 3, 8), F32), np.zeros((2, 3, 8), F32), 2)  # 4 positions, 3 held
    with pytest.raises(UsageError):
        cpu_attention.attention(q, np.zeros((3, 9, 8), F32), np.zeros((3, 9, 8), F32), 0)  # 4 heads, 3 kv heads
