"""The compiled CPU GEMV (refspec/cpu_gemv.py) gives refspec.spec.q8_gemv's bits: shapes off every tile and
row group, both loop orders, extreme quants and scales (fp16 huge, tiny, subnormal, zero, infinite), the
spec's reduction order and rounding order (values built so that another order changes the bits), and no FMA
in the machine code."""
import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from refspec import cpu_gemv, spec
from refspec.backends import CpuBackend
from refspec.errors import UsageError
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.model import Q8_0_BLOCK, Q8Matrix
from refspec.synthetic import write_model
from bits import assert_bits_equal

F32 = np.float32
# fp16 scales worth drawing: zero and -0, the smallest subnormal, a subnormal, the smallest normal, one, the
# largest finite, infinities (a scaled zero dot then gives NaN: NaN payloads are unspecified, SPEC.md)
SPECIAL_SCALES = np.array([0.0, -0.0, 2.0**-24, 3 * 2.0**-20, 2.0**-14, 1.0, -1.0, 65504.0, -65504.0,
                           np.inf, -np.inf], np.float16)


def gguf_rows(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """GGUF Q8_0 rows int8 [N, nb*34] of quants q int8 [N, nb*32] and scales d f16 [N, nb]."""
    n, nb = d.shape
    blocks = np.empty((n, nb), Q8_0_BLOCK)
    blocks["d"], blocks["q"] = d, q.reshape(n, nb, 32)
    return blocks.view(np.int8).reshape(n, -1)


def draw_scales(rng, shape, special: bool) -> np.ndarray:
    d = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 300.0])).astype(np.float16)
    if special:
        pick = rng.random(shape) < 0.3
        d[pick] = rng.choice(SPECIAL_SCALES, int(pick.sum()))
    return d


def draw_quants(rng, shape) -> np.ndarray:
    q = rng.integers(-128, 128, shape, dtype=np.int8)
    q[rng.random(shape) < 0.2] = 0
    q[rng.random(shape) < 0.05] = -128
    q[rng.random(shape) < 0.05] = 127
    return q


def check_equals_spec(q, d, xq, xd, what):
    with np.errstate(all="ignore"):  # infinite scales times zero dots: NaN, as the kernel's
        want = spec.q8_gemv(Q8Matrix(q, d), xq, xd)
    got = cpu_gemv.q8_gemv(gguf_rows(q, d), xq, xd)
    assert_bits_equal(got, want, what)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), blocks=st.integers(1, 70), rows=st.integers(1, 70), seed=st.integers(0, 2**32 - 1),
       special=st.booleans())
def test_compiled_gemv_equals_spec(n, blocks, rows, seed, special):
    rng = np.random.default_rng(seed)
    q, d = draw_quants(rng, (n, blocks * 32)), draw_scales(rng, (n, blocks), special)
    xq, xd = draw_quants(rng, (rows, blocks * 32)), draw_scales(rng, (rows, blocks), special)
    check_equals_spec(q, d, xq, xd, f"N={n} nb={blocks} R={rows}")


@pytest.mark.parametrize("rows", sorted({1, 2, 3, 4, 5, 6, 7, cpu_gemv.FEW_ROWS, cpu_gemv.FEW_ROWS + 1, 8, 9, 16, 17,
                                          31, 32, 33, 63, 64, 65, 70}))
def test_compiled_gemv_equals_spec_at_row_group_edges(rows):
    """Both loop orders, the few-rows order's pairs of rows and odd row, and every split of the row groups
    into calls of 8, 4, 2, 1 groups, on activations as the model makes them (quantize_q8_0) and columns
    spanning several tiles; every row count listed, each time."""
    rng = np.random.default_rng(rows)
    n, blocks = 2 * cpu_gemv.TILE_COLUMNS + 3, 33
    q, d = draw_quants(rng, (n, blocks * 32)), draw_scales(rng, (n, blocks), False)
    xq, xd = spec.quantize_q8_0(rng.standard_normal((rows, blocks * 32)).astype(F32))
    check_equals_spec(q, d, xq, xd, f"R={rows}")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 90), blocks=st.integers(1, 40), rows=st.sampled_from([1, 2, 3, 9]),
       cuts=st.lists(st.integers(0, 90), max_size=6), threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_column_ranges_over_threads_equal_spec(n, blocks, rows, cuts, threads, seed):
    """gemv_tasks: any increasing column ranges (empty ones, ranges that end inside a column group or tile),
    run by numba's threads, into an output wider than the matrix at an offset: the spec's bits, and the
    columns outside untouched."""
    rng = np.random.default_rng(seed)
    q, d = draw_quants(rng, (n, blocks * 32)), draw_scales(rng, (n, blocks), False)
    xq, xd = spec.quantize_q8_0(rng.standard_normal((rows, blocks * 32)).astype(F32))
    bounds = np.array(sorted([0, n] + [min(c, n) for c in cuts]), np.int64)
    out = np.full((rows, n + 5), 7.0, F32)
    cpu_gemv.gemv_tasks(gguf_rows(q, d), cpu_gemv.PreparedRows(xq, xd), out, 3, bounds, threads)
    assert_bits_equal(out[:, 3 : 3 + n], spec.q8_gemv(Q8Matrix(q, d), xq, xd), f"N={n} bounds={bounds.tolist()}")
    assert (out[:, :3] == 7).all() and (out[:, 3 + n :] == 7).all()


def test_every_fp16_scale_converts_exactly():
    """One block per output, dot 1, activation scale 1: y[n] = float32(wd[n]) + 0.0 for all 65,536 fp16
    values (a lane sum starts at +0.0, so -0.0 comes out +0.0)."""
    d = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(-1, 1)
    q = np.zeros((len(d), 32), np.int8)
    q[:, 0] = 1
    xq = np.zeros((1, 32), np.int8)
    xq[0, 0] = 1
    got = cpu_gemv.q8_gemv(gguf_rows(q, d), xq, np.ones((1, 1), np.float16))
    with np.errstate(invalid="ignore"):  # NaN + 0.0
        want = d[:, 0].astype(F32) + F32(0)
    assert_bits_equal(got[0], want, "fp16 scales")


def one_block_per_term(terms_scale: list[float], dots: list[int], rows: int = 1):
    """A 1-column matrix whose block b has the dot dots[b] with every activation row and weight scale
    terms_scale[b] (activation scales 1): t[b] = float32(terms_scale[b]) * dots[b]."""
    nb = len(dots)
    q = np.zeros((1, nb * 32), np.int8)
    xq = np.zeros((rows, nb * 32), np.int8)
    for b, dot in enumerate(dots):  # dot = 127 * a + rest, spread over the block's 32 products
        a, rest = divmod(abs(dot), 127)
        assert a < 31
        q[0, 32 * b : 32 * b + a] = 127 if dot > 0 else -127
        q[0, 32 * b + a] = rest if dot > 0 else -rest
        xq[:, 32 * b : 32 * b + a + 1] = 1
    d = np.array([terms_scale], np.float16)
    return q, d, xq, np.ones((rows, nb), np.float16)


@pytest.mark.parametrize("rows", [1, 5, 9])
def test_blocks_are_summed_in_the_spec_lane_order(rows):
    """Terms L, s, 0 ..., -L (block 32) and -L at block 16 of another matrix: the spec's lanes give s, a
    left-to-right sum gives 0 (s is absorbed by L), and the kernel must give the spec's."""
    big, small = 32768.0, 1.0  # L = 2**15 * 3000 > 2**26 absorbs 1.0 in binary32
    for nb, cancel_at in ((33, 32), (17, 16)):  # same lane (32 blocks apart); halving partner (16 apart)
        scales, dots = [1.0] * nb, [0] * nb
        scales[0], dots[0] = big, 3000
        scales[1], dots[1] = small, 1
        scales[cancel_at], dots[cancel_at] = big, -3000
        q, d, xq, xd = one_block_per_term(scales, dots, rows)
        terms = [F32(F32(s) * F32(t)) for s, t in zip(d[0].astype(F32), dots)]
        left_to_right = F32(0)
        for t in terms:
            left_to_right = F32(left_to_right + t)
        want = spec.q8_gemv(Q8Matrix(q, d), xq, xd)
        assert want[0, 0] == F32(1.0) and left_to_right == F32(0.0)  # the order matters for these values
        assert_bits_equal(cpu_gemv.q8_gemv(gguf_rows(q, d), xq, xd), want, f"nb={nb}")
        columns = cpu_gemv.COLUMN_GROUP + 1  # the same column 9 times: a column group, then a column alone
        got = cpu_gemv.q8_gemv(gguf_rows(np.repeat(q, columns, 0), np.repeat(d, columns, 0)), xq, xd)
        assert_bits_equal(got, np.repeat(want, columns, 1), f"nb={nb}, {columns} columns")


@pytest.mark.parametrize("rows", [1, 5, 9])
def test_scales_multiply_before_the_dot(rows):
    """t = (wd * xd) * dot, not wd * (xd * dot): values where the two roundings differ (both loop orders)."""
    rng = np.random.default_rng(5)
    wd = rng.standard_normal(4096).astype(np.float16)
    xd = rng.standard_normal(4096).astype(np.float16)
    dot = rng.integers(-400000, 400000, 4096)
    spec_order = (wd.astype(F32) * xd.astype(F32)) * dot.astype(F32)
    other = wd.astype(F32) * (xd.astype(F32) * dot.astype(F32))
    i = int(np.argmax(spec_order.view(np.uint32) != other.view(np.uint32)))
    assert spec_order[i] != other[i]
    q, d, xq, _ = one_block_per_term([float(wd[i])], [0])
    q[0, :32] = 0
    xq[0, :32] = 0
    a, rest = divmod(abs(int(dot[i])), 127 * 127)  # dot = 127*127*a + rest: a products of 127*127, then 1*rest
    rest_w, rest_x = divmod(rest, 127)
    sign = 1 if dot[i] > 0 else -1
    q[0, :a], xq[0, :a] = 127 * sign, 127
    q[0, a], xq[0, a] = 127 * sign, rest_w
    q[0, a + 1], xq[0, a + 1] = rest_x * sign, 1
    assert int(q[0].astype(np.int64) @ xq[0].astype(np.int64)) == dot[i]
    columns = cpu_gemv.COLUMN_GROUP + 1  # a column group and a column alone: both loops
    got = cpu_gemv.q8_gemv(gguf_rows(np.repeat(q, columns, 0), np.repeat(d, columns, 0)), np.repeat(xq, rows, 0),
                           np.full((rows, 1), xd[i], np.float16))
    assert_bits_equal(got, np.full((rows, columns), spec_order[i]), "(wd * xd) * dot")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 mnemonics")
def test_machine_code_has_no_fma():
    """numba compiles without fastmath: no fused multiply-add in either loop (the bits tests would also
    catch one, on values where it rounds differently). Fresh uncached copies: numba cannot show the machine
    code of functions loaded from its cache."""
    rows = gguf_rows(np.ones((3, 64), np.int8), np.ones((3, 2), np.float16))
    out = np.zeros((9, 3), F32)
    few = cpu_gemv.PreparedRows(np.ones((1, 64), np.int8), np.ones((1, 2), np.float16))
    many = cpu_gemv.PreparedRows(np.ones((9, 64), np.int8), np.ones((9, 2), np.float16))
    f16 = cpu_gemv.F16_TO_F32
    loops = {"few rows": (cpu_gemv._columns_few_rows, (rows, few.xq, few.x16, few.xs, out[:1], 0, 0, 3, f16)),
             "row groups": (cpu_gemv._columns_row_groups, (rows, many.xt, many.xs_t, 9, out, 0, 0, 3, f16))}
    for name, (kernel, args) in loops.items():
        fresh = njit(nogil=True)(kernel.py_func)
        fresh(*args)
        asm = "\n".join(fresh.inspect_asm().values())
        assert "vmulps" in asm or "vmulss" in asm, f"{name}: no float multiply: not the loop's code"
        assert not any(op in asm for op in ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub")), f"{name}: FMA"


def test_misuse_is_a_usage_error():
    rows = gguf_rows(np.zeros((4, 64), np.int8), np.ones((4, 2), np.float16))
    x = cpu_gemv.PreparedRows(np.zeros((3, 64), np.int8), np.ones((3, 2), np.float16))
    out = np.zeros((3, 4), F32)
    with pytest.raises(UsageError):
        cpu_gemv.gemv_columns(rows[:, :34], x, out, 0, 0, 4)  # one block per row, not two
    with pytest.raises(UsageError):
        cpu_gemv.gemv_columns(rows, x, out, 1, 0, 4)  # past the output
    with pytest.raises(UsageError):
        cpu_gemv.gemv_columns(rows[::2], x, out, 0, 0, 2)  # not contiguous
    with pytest.raises(UsageError):
        cpu_gemv.PreparedRows(np.zeros((3, 64), np.int8), np.ones((3, 3), np.float16))
    for bounds in (np.array([0, 3, 2, 4]), np.array([0, 5]), np.array([4]), np.array([0.0, 4.0])):
        with pytest.raises(UsageError):  # decreasing, past the matrix, one bound, not integers
            cpu_gemv.gemv_tasks(rows, x, out, 0, bounds, 2)


class SpecOps(CpuBackend):
    """The CPU backend with refspec.spec's own ops instead of the compiled ones (its fused ops then compose
    these: CpuBackend.COMPILED_FUSED)."""
    rmsnorm = staticmethod(spec.rmsnorm)
    quantize_q8 = staticmethod(spec.quantize_q8_0)
    silu_mul = staticmethod(spec.silu_mul)
    rope = staticmethod(spec.rope)
    attention = staticmethod(spec.attention)


@pytest.mark.parametrize("arch, shape", [
    ("llama", dict(n_layer=2, n_embd=96, n_ff=160, n_head=3, n_head_kv=1, n_vocab=333)),
    ("qwen2", dict(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2, n_vocab=301)),
    ("qwen3", dict(n_layer=2, n_embd=64, n_ff=64, n_head=2, n_head_kv=2, head_dim=32, n_rot=16, n_vocab=290))])
def test_compiled_forward_equals_the_blas_path(tmp_path, arch, shape):
    """Whole passes (1 and 9 rows) with the compiled GEMV, attention and per-row ops (the default) and with
    nothing compiled: float32 copies through BLAS (resident_bytes) and every other op from refspec.spec. The
    same logits bit for bit."""
    model = load(write_model(tmp_path / "m.gguf", arch=arch, n_ctx=64, seed=5, **shape), log=lambda message: None)
    compiled, blas = Transformer(model, CpuBackend()), Transformer(model, SpecOps(resident_bytes=1 << 40))
    assert compiled.weights.layers[0].wq.stack.wf is None and blas.weights.layers[0].wq.stack.wf is not None
    for rows in (1, 9):
        ids = list(np.random.default_rng(rows).integers(0, model.config.n_vocab, rows + 2))
        caches = blas.new_cache(16), compiled.new_cache(16)
        want = [blas.forward(caches[0], ids[:2], 0), blas.forward(caches[0], ids[2:], 2)]  # a prefix, then the rows
        for got, expected in zip([compiled.forward(caches[1], ids[:2], 0), compiled.forward(caches[1], ids[2:], 2)],
                                 want):
            assert_bits_equal(got, expected, f"{arch}, {rows} rows")
