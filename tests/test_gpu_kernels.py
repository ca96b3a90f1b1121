"""Each GPU kernel (kernels_raw/) equals its NumPy twin in refspec.spec, bit for bit, on drawn shapes and values:
R = 1..16 rows (and more, split by the wrapper), block counts and row counts that are odd or not multiples of
any tile, zeros, -0.0, subnormals, huge values, rounding ties. Outputs are poisoned before every launch
(GpuBackend(poison=...)), so an element a kernel forgets to write shows as a mismatch."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec import spec
from refspec.backends import CpuBackend
from refspec.errors import NumericsError, UsageError
from refspec.gpu import gpu_available
from refspec.gpu_mappings import (ATTN_HEADS, ATTN_SLICES, ATTN_THREAD_CHOICES, GEMV_CONFIGS, GEMV_MAX_ROWS,
                                  GEMV_MMA_VARIANTS, AttnPlan, GemvConfig)
from refspec.model import QK8_0, Q8Matrix

from bits import assert_bits_equal

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy sees none")]

F32 = np.float32
POISONS = (0xFF, 0x5A)  # NaN (float32), -1 (int8), NaN (fp16); then 0x5A5A5A5A, 90, 0x5A5A
SPECIALS = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -3e-39, 1.1754944e-38, 3.4028235e38, -3.4028235e38,
                     1e30, -1e30, 2.5, -2.5, 0.5, -1.5, 127.0, -127.0], dtype=F32)


@pytest.fixture(scope="module", params=POISONS, ids=lambda p: f"poison{p:#x}")
def be(request):
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=request.param)


def assert_same(actual, expected, what: str, nan_equal: bool = False) -> None:
    """Bitwise equality (tests/bits.py); with nan_equal, any NaN matches any NaN (payloads are unspecified)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if nan_equal and actual.dtype.kind == "f":
        both = np.isnan(actual) & np.isnan(expected)
        nan = actual.dtype.type(np.nan)
        actual, expected = np.where(both, nan, actual), np.where(both, nan, expected)
    assert_bits_equal(actual, expected, what)


def floats(rng: np.random.Generator, shape, style: str) -> np.ndarray:
    """float32 values of a style: normal (any scale), wide (magnitudes 2**-149 .. 2**127: subnormals and huge
    values), special (normal values with SPECIALS sprinkled in), ties (halves and block maxima of 127, where
    quantization rounds half away from zero)."""
    size = int(np.prod(shape))
    if style == "normal":
        x = rng.standard_normal(size) * F32(10.0 ** rng.uniform(-3, 3))
    elif style == "wide":
        x = rng.choice([-1.0, 1.0], size) * np.exp2(rng.uniform(-149, 127, size))
    elif style == "special":
        x = rng.standard_normal(size)
        pick = rng.random(size) < 0.3
        x[pick] = rng.choice(SPECIALS, int(pick.sum()))
    else:  # ties
        x = rng.integers(-254, 255, size) / 2.0
        x[:: QK8_0] = 127.0
    return np.asarray(x, dtype=F32).reshape(shape)


STYLES = st.sampled_from(["normal", "wide", "special", "ties"])


def rng_from(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def random_q8(rng, n: int, k: int, scale_style: str = "normal") -> Q8Matrix:
    q = rng.integers(-128, 128, (n, k), dtype=np.int8)
    if scale_style == "normal":
        d = (rng.standard_normal((n, k // QK8_0)) * 0.01).astype(np.float16)
    else:  # fp16 zeros, subnormals, the largest values
        d = rng.choice(np.array([0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 1.0], np.float16),
                       (n, k // QK8_0))
    return Q8Matrix(q=q, d=d)


# ------------------------------------------------------------------------------------------------- gemv
@given(data=st.data())
def test_q8_gemv_equals_spec(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, GEMV_MAX_ROWS) | st.integers(GEMV_MAX_ROWS + 1, 40), label="rows")
    n = data.draw(st.integers(1, 300), label="n")
    nb = data.draw(st.integers(1, 200), label="blocks")
    k = nb * QK8_0
    w = random_q8(rng, n, k, data.draw(st.sampled_from(["normal", "extreme"]), label="scales"))
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), data.draw(STYLES, label="x")))
    expected = spec.q8_gemv(w, xq, xd)
    got = be.to_host(be.q8_gemv(be.upload_q8(w), be.asarray(xq), be.asarray(xd)))
    assert_same(got, expected, f"q8_gemv R={rows} N={n} K={k}", nan_equal=True)  # extreme scales: inf * 0


VARIANTS = [GemvConfig("q8_gemv", nr, split, occ) for nr, split, occ in ((1, 1, 1), (4, 1, 1), (2, 2, 1), (8, 4, 2))]
VARIANTS += [GemvConfig("q8_gemv", nr, split, depth=depth) for nr, split, depth in ((1, 1, 2), (2, 1, 3), (4, 2, 2))]
VARIANTS += [GemvConfig("q8_gemv_staged", nr, split) for nr, split in ((1, 1), (4, 1), (2, 2), (8, 4))]
VARIANTS += GEMV_MMA_VARIANTS  # tensor cores: skipped without


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 13, 16])
@pytest.mark.parametrize("config", VARIANTS,
                         ids=lambda c: f"{c.kernel}-{c.nr}-{c.split}-{c.occ}-{c.depth}" + ("-res" if c.resident else "")
                         + (f"-g{c.groups}" if c.groups != 1 else ""))
@settings(max_examples=4)
@given(data=st.data())
def test_every_gemv_variant_equals_spec(be, rows, config, data):
    """Every mapping `refspec bench gemv --variants` can pick gives the spec's bits, not only the production
    ones: SPLIT groups sharing weight rows (with a last group of fewer rows), staged activations, OCC, DEPTH
    rounds of weights in flight (rows of fewer blocks than DEPTH rounds of the lanes, and of a part of one),
    and the tensor-core GEMV's resident activations (blocks of 1 or 3 tiles: the later tiles read them), also
    shared by a block's two streams of tiles."""
    mma = config.kernel == "q8_gemv_mma"  # its SPLIT is tiles of weight rows, and K a multiple of 64
    if (config.split > rows and not mma) or (mma and not be.mma_available):
        return
    rng = rng_from(data)
    n = data.draw(st.integers(1, 200), label="n")
    # (resident activations: rows of up to 5 rounds of the lanes, or as many as the mapping's slots fit)
    top = 80 if config.resident else 150
    while mma and top > 1 and not be.gemv_fits(config, rows, top * 2 * QK8_0):
        top -= 16  # a round of the lanes (16 pairs of blocks) fewer
    k = data.draw(st.integers(1, top), label="blocks") * QK8_0 * (2 if mma else 1)
    w = random_q8(rng, n, k)
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
    y = be._empty((rows, n))
    max_blocks = data.draw(st.sampled_from([None, 1, 3]), label="max blocks") if mma else None  # tiles a block
    be.launch_gemv(config, be.upload_q8(w), be.asarray(xq), be.asarray(xd), y, max_blocks=max_blocks)
    assert_same(be.to_host(y), spec.q8_gemv(w, xq, xd), f"{config} R={rows} N={n} K={k} blocks<={max_blocks}")


@pytest.mark.parametrize("rows", [3, 5, 8, 9, 12, 16])
@pytest.mark.parametrize("rounds", [1, 3.5, 5, 6])
def test_streaming_tensor_core_gemv_equals_spec(rows, rounds):
    """The mapping the backend itself picks for a matrix of many more tiles than the GPU holds at once: two
    streams of tiles a block sharing their resident activations (rows of 1 to 6 rounds of the lanes, the most
    whose slots fit at 8 rows; 5 or more at 9-16 rows, beyond which the tall tiles stream), with the spec's bits."""
    from refspec.gpu import GpuBackend
    from refspec.gpu_mappings import GEMV_MMA_TALL, two_streams

    be = GpuBackend(mma_min_rows=3, mma_min_weights=0)
    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    rng = np.random.default_rng(rows)
    n, k = 16 * 8 * be._multiprocessors + 40, int(rounds * 32) * QK8_0  # 4 tiles a stream, a partial last one
    fits = be.gemv_fits(two_streams(rows), rows, k)
    assert fits or (rows > 8 and rounds > 5)
    assert be.gemv_config(rows, k, n) == (two_streams(rows) if fits else GEMV_MMA_TALL)
    w = random_q8(rng, n, k)
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
    got = be.to_host(be.q8_gemv(be.upload_q8(w), be.asarray(xq), be.asarray(xd)))
    assert_same(got, spec.q8_gemv(w, xq, xd), f"q8_gemv R={rows} N={n} K={k}")


@pytest.mark.parametrize("rows", [3, 8])
@pytest.mark.parametrize("waves", [1.2, 1.9])
def test_two_streams_over_one_to_two_waves_equal_spec(rows, waves):
    """Blocks of two streams over a matrix of one to two waves of tiles (qwen2.5-32b's 5120 x 5120 at 8 rows
    is 1.2 waves): the mapping the backend picks there, whichever tiles its grid deals each stream, and the
    spec's bits, a partial last tile included."""
    from refspec.gpu import GpuBackend
    from refspec.gpu_mappings import GEMV_MMA_TWO_STREAMS

    be = GpuBackend(mma_min_rows=3, mma_min_weights=0)
    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    rng = np.random.default_rng(rows)
    n, k = int(16 * 2 * be._multiprocessors * waves) + 9, 5120
    assert be.gemv_config(rows, k, n) == GEMV_MMA_TWO_STREAMS
    w = random_q8(rng, n, k)
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
    got = be.to_host(be.q8_gemv(be.upload_q8(w), be.asarray(xq), be.asarray(xd)))
    assert_same(got, spec.q8_gemv(w, xq, xd), f"q8_gemv R={rows} N={n} K={k}")


@pytest.mark.parametrize("rows, tiles", [(3, 201), (5, 201), (8, 201), (8, 301)])
def test_narrow_blocks_of_long_rows_equal_spec(rows, tiles):
    """3-8 rows of rows of 8 rounds of the lanes and part of a ninth, over less than a wave of GEMV_MMA's blocks
    or (8 rows, whose activations do not fit slots beside two streams) more, the last tile partial: the backend
    picks GEMV_MMA_NARROW (4 warps a block, 8 lanes a warp); the spec's bits, alone and with a residual added."""
    from refspec.gpu import GpuBackend
    from refspec.gpu_mappings import GEMV_MMA_NARROW

    be = GpuBackend(mma_min_rows=3, mma_min_weights=0)
    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    rng = np.random.default_rng(rows + tiles)
    n, k = tiles * 16 - 8, 8192 + 3 * 2 * QK8_0
    assert be.gemv_config(rows, k, n) == GEMV_MMA_NARROW
    w = random_q8(rng, n, k)
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
    expected = spec.q8_gemv(w, xq, xd)
    got = be.to_host(be.q8_gemv(be.upload_q8(w), be.asarray(xq), be.asarray(xd)))
    assert_same(got, expected, f"q8_gemv R={rows} N={n} K={k}")
    x = floats(rng, (rows, n), "normal")  # and with the residual added in the epilogue, as a down projection runs
    got = be.to_host(be.q8_gemv_add(be.asarray(x), be.upload_q8(w), be.asarray(xq), be.asarray(xd)))
    assert_same(got, spec.add(x, expected), f"q8_gemv_add R={rows} N={n} K={k}")


@pytest.mark.parametrize("rows", [9, 16])
@pytest.mark.parametrize("rounds", [3.5, 5])
def test_one_to_two_waves_of_tall_tiles_equal_spec(rows, rounds):
    """9-16 rows of a matrix of one and a half waves of tall tiles (32 weight rows): the backend picks two streams
    of 16-row tiles a block, two tiles a stream, the last one partial; the spec's bits."""
    from refspec.gpu import GpuBackend
    from refspec.gpu_mappings import GEMV_MMA_TWO_STREAMS_16

    be = GpuBackend(mma_min_rows=3, mma_min_weights=0)
    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    rng = np.random.default_rng(rows + 100)
    n, k = 48 * be._multiprocessors + 24, int(rounds * 32) * QK8_0
    assert be.gemv_config(rows, k, n) == GEMV_MMA_TWO_STREAMS_16
    w = random_q8(rng, n, k)
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
    got = be.to_host(be.q8_gemv(be.upload_q8(w), be.asarray(xq), be.asarray(xd)))
    assert_same(got, spec.q8_gemv(w, xq, xd), f"q8_gemv R={rows} N={n} K={k}")


def test_gemv_configs_cover_every_row_count():
    assert sorted(GEMV_CONFIGS) == list(range(1, GEMV_MAX_ROWS + 1))


# ----------------------------------------------------------------------------------------- quantization
@given(data=st.data())
def test_quantize_q8_0_equals_spec(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 20), label="rows")
    k = data.draw(st.integers(1, 160), label="blocks") * QK8_0
    x = floats(rng, (rows, k), data.draw(STYLES, label="style"))
    eq, ed = spec.quantize_q8_0(x)
    gq, gd = be.quantize_q8(be.asarray(x))
    assert_same(be.to_host(gq), eq, "quants")
    assert_same(be.to_host(gd), ed, "scales")


@given(data=st.data())
def test_rmsnorm_q8_equals_spec(be, data):
    """Rows past the longest the kernel stages in shared memory (376 blocks; its threads' loads come in
    batches of 16 x 128 x 4 floats, so rows of 257+ blocks take a second, partial batch; 377+ run
    rmsnorm_q8_wide)."""
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 20), label="rows")
    k = data.draw(st.integers(1, 160) | st.integers(250, 384), label="blocks") * QK8_0
    x = floats(rng, (rows, k), data.draw(STYLES, label="style"))
    w = floats(rng, (k,), "normal")
    eps = data.draw(st.sampled_from([1e-5, 1e-6, 0.0, 1e-30]), label="eps")
    eq, ed = spec.quantize_q8_0(spec.rmsnorm(x, w, eps))
    gq, gd = be.rmsnorm_q8(be.asarray(x), be.asarray(w), eps)
    assert_same(be.to_host(gq), eq, "quants")
    assert_same(be.to_host(gd), ed, "scales", nan_equal=True)  # eps = 0 and a zero row give NaN scales


@pytest.mark.parametrize("blocks", [256, 257, 376, 377, 384])
def test_rmsnorm_q8_at_the_staging_limits_equals_spec(be, blocks):
    """The rows either side of the staging batch (256 blocks) and of the shared-memory limit (376 staged, 377
    wide): a row of 384 blocks (48 KB) once failed to launch, its static shared variable on top of 48 KB."""
    k = blocks * QK8_0
    x = floats(np.random.default_rng(blocks), (3, k), "normal")
    w = floats(np.random.default_rng(k), (k,), "normal")
    eq, ed = spec.quantize_q8_0(spec.rmsnorm(x, w, 1e-5))
    gq, gd = be.rmsnorm_q8(be.asarray(x), be.asarray(w), 1e-5)
    assert_same(be.to_host(gq), eq, f"quants K={k}")
    assert_same(be.to_host(gd), ed, f"scales K={k}")


# ---------------------------------------------------------------------------------------- elementwise
def test_subnormals_are_kept(be):
    """No flush to zero anywhere: CuPy's RawModule would add -ftz=true; refspec.gpu compiles without it."""
    tiny = np.array([[1e-45, -3e-39, 1.1754942e-38, 5e-41]], F32)
    assert_same(be.to_host(be.add(be.asarray(tiny), be.asarray(tiny))), spec.add(tiny, tiny), "add")
    x = np.full((1, 32), 1e-39, F32)  # a block of subnormals: amax / 127 is subnormal, 1 / d overflows
    for got, want, what in zip(be.quantize_q8(be.asarray(x)), spec.quantize_q8_0(x), ("quants", "scales")):
        assert_same(be.to_host(got), want, what)
    gate = np.array([-87.0, -86.5, -80.0], F32)  # exp results near and below 2**-126
    assert_same(be.to_host(be.silu_mul(be.asarray(gate), be.asarray(np.ones(3, F32)))),
                spec.silu_mul(gate, np.ones(3, F32)), "silu_mul")



@given(data=st.data())
def test_rmsnorm_equals_spec(be, data):
    """Heads (up to 300) and whole hidden rows (500-6000: the kernel's loop takes 16 of a lane's values at a
    time, then the rest one by one)."""
    rng = rng_from(data)
    n = data.draw(st.integers(1, 300) | st.integers(500, 6000), label="n")
    shape = (data.draw(st.integers(1, 16)), data.draw(st.integers(1, 9)), n)
    x = floats(rng, shape, data.draw(STYLES, label="style"))
    w = floats(rng, shape[-1:], "normal")
    eps = data.draw(st.sampled_from([1e-5, 1e-6, 0.0]), label="eps")
    assert_same(be.to_host(be.rmsnorm(be.asarray(x), be.asarray(w), eps)), spec.rmsnorm(x, w, eps), "rmsnorm",
                nan_equal=True)


@given(data=st.data())
def test_silu_mul_and_exp_equal_spec(be, data):
    rng = rng_from(data)
    n = data.draw(st.integers(1, 5000), label="n")
    style = data.draw(st.sampled_from(["normal", "wide", "special", "exp-range"]), label="style")
    if style == "exp-range":  # every branch of exp: below -87, above 88, the edges, inf, NaN
        gate = rng.uniform(-100, 100, n).astype(F32)
        edges = np.array([-87.0, 87.0, 88.0, -88.0, 87.5, -86.9, np.inf, -np.inf, np.nan, 0.0, -0.0], F32)
        pick = rng.random(n) < 0.2
        gate[pick] = rng.choice(edges, int(pick.sum()))
    else:
        gate = floats(rng, (n,), style)
    up = floats(rng, (n,), "normal")
    got = be.to_host(be.silu_mul(be.asarray(gate), be.asarray(up)))
    assert_same(got, spec.silu_mul(gate, up), "silu_mul", nan_equal=True)


@given(data=st.data())
def test_add_equals_spec(be, data):
    rng = rng_from(data)
    rows, n = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 3000))
    x = floats(rng, (rows, n), data.draw(STYLES))
    y = floats(rng, (n,) if data.draw(st.booleans(), label="bias") else (rows, n), data.draw(STYLES))
    assert_same(be.to_host(be.add(be.asarray(x), be.asarray(y))), spec.add(x, y), "add", nan_equal=True)


@given(data=st.data())
def test_embed_equals_spec(be, data):
    rng = rng_from(data)
    n_vocab, k = data.draw(st.integers(1, 500)), data.draw(st.integers(1, 40)) * QK8_0
    w = random_q8(rng, n_vocab, k, data.draw(st.sampled_from(["normal", "extreme"])))
    ids = rng.integers(0, n_vocab, data.draw(st.integers(1, 40)))
    assert_same(be.to_host(be.embed(be.upload_q8(w), ids)), spec.embed(w, ids), "embed")


def test_embed_rejects_ids_out_of_range(be):
    w = random_q8(np.random.default_rng(0), 10, 32)
    with pytest.raises(UsageError, match="token ids"):
        be.embed(be.upload_q8(w), [3, 10])


@given(data=st.data())
def test_rope_equals_spec(be, data):
    rng = rng_from(data)
    rows, heads = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 8))
    dim = 2 * data.draw(st.integers(1, 80))
    n_rot = 2 * data.draw(st.integers(1, dim // 2))
    n_ctx = data.draw(st.integers(rows, 700))
    pos0 = data.draw(st.integers(0, n_ctx - rows))
    neox = data.draw(st.booleans())
    cos, sin = spec.rope_table(n_ctx, n_rot, data.draw(st.sampled_from([10000.0, 1e6, 500000.0])))
    x = floats(rng, (rows, heads, dim), data.draw(STYLES))
    got = be.rope(be.asarray(x), pos0, be.asarray(cos), be.asarray(sin), neox)
    assert_same(be.to_host(got), spec.rope(x, pos0, cos, sin, neox), f"rope neox={neox}", nan_equal=True)


@given(data=st.data())
def test_kv_write_equals_cpu(be, data):
    rng = rng_from(data)
    rows, kv_heads, dim = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 130))
    n_pos = data.draw(st.integers(rows, 300))
    pos0 = data.draw(st.integers(0, n_pos - rows))
    kc, vc = floats(rng, (kv_heads, n_pos, dim), "normal"), floats(rng, (kv_heads, n_pos, dim), "normal")
    k, v = floats(rng, (rows, kv_heads, dim), "special"), floats(rng, (rows, kv_heads, dim), "special")
    gk, gv = be.asarray(kc), be.asarray(vc)
    be.kv_write(gk, gv, be.asarray(k), be.asarray(v), pos0)
    CpuBackend.kv_write(kc, vc, k, v, pos0)
    assert_same(be.to_host(gk), kc, "k cache")
    assert_same(be.to_host(gv), vc, "v cache")


# -------------------------------------------------------------------------------------------- attention
@contextlib.contextmanager
def attention_launch(be, threads: int, plan: AttnPlan, spread: int | None = None, paired: bool | None = None,
                     slice_len: int | None = None, rows_a_unit: int | None = None, col_parts: int | None = None):
    """Attention launched with `threads` threads per block whatever the launch's size, by `plan` (one kernel a
    block per (row, head), one a block per (row, kv head), or two spread over positions), and then with at most
    `spread` blocks per unit computing scores (None: the backend's spread), attention_values paired or not
    (None: as the backend chooses; HIP has only the unpaired kernel; units of several rows are never paired),
    slices of `slice_len` positions (None: the backend's), units of `rows_a_unit` rows in both spread kernels and
    `col_parts` blocks of attention_values a (unit, chunk), each a part of the columns (None: the backend's; the
    paired kernel takes one)."""
    be.attention_plan = lambda rows, heads, kv_heads, cache_len: plan  # each shadows the method on this instance
    be.attention_threads = lambda blocks: threads
    if spread is not None:
        be.attention_spread = lambda blocks, slices: min(slices, spread)
    if paired is not None:
        be.attention_values_paired = lambda blocks, threads: paired and be.platform != "hip"
    if slice_len is not None:
        be.attention_slice = lambda units, cache_len: slice_len
    if rows_a_unit is not None:
        be.attention_values_rows = lambda rows, blocks: max(1, min(rows_a_unit, rows))
    if col_parts is not None:
        be.attention_values_col_parts = lambda blocks: col_parts
    try:
        yield
    finally:
        del be.attention_plan, be.attention_threads
        for name in ("attention_spread", "attention_values_paired", "attention_slice", "attention_values_rows",
                     "attention_values_col_parts"):
            be.__dict__.pop(name, None)


ATTENTION_PLANS = [AttnPlan("attention")] + [AttnPlan(kernel, per) for kernel in ("attention_heads", "spread")
                                             for per in range(1, ATTN_HEADS + 1)]
# (threads, plan, spread, paired, slice_len, rows a unit of attention_values, its column parts); slices of 32 and
# 96 positions, units of 3 rows and 3 or 64 column parts (more than a head of 128 has items: parts with none) too,
# off the backend's choices
ATTENTION_LAUNCHES = st.tuples(st.sampled_from(ATTN_THREAD_CHOICES), st.sampled_from(ATTENTION_PLANS),
                               st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, False, True]),
                               st.sampled_from((None, 32, 96) + ATTN_SLICES), st.sampled_from([None, 1, 2, 3]),
                               st.sampled_from([None, 1, 2, 3, 8, 64]))


def test_attention_threads_fill_the_gpu_once(be):
    sms = be._multiprocessors
    assert [be.attention_threads(b) for b in (1, sms, sms + 1, 2 * sms, 2 * sms + 1, 4 * sms, 4 * sms + 1)] == [
        512, 512, 256, 256, 128, 128, 128]
    one, heads2, heads4 = AttnPlan("attention"), AttnPlan("attention_heads", 2), AttnPlan("attention_heads", 4)
    heads3 = AttnPlan("attention_heads", 3)
    split4 = AttnPlan("spread", 4)
    # (rows, query heads, kv heads, cache length): 32 heads of 8 kv heads fill the multiprocessors by (row, head)
    # up to sms // 32 rows, by (row, kv head, two heads) up to sms // 16, by (row, kv head, four heads) up to sms // 8,
    # and then two of those blocks a multiprocessor up to sms // 4
    assert [be.attention_plan(*case) for case in (
        (sms // 32, 32, 8, 512), (sms // 16, 32, 8, 512), (sms // 8, 32, 8, 512), (sms // 8 + 1, 32, 8, 512),
        (sms // 16, 40, 8, 512), (sms // 8, 8, 8, 512), (1, 2 * sms - 1, 2 * sms - 1, 512), (1, 2 * sms, 2 * sms, 512),
        (1, 32, 8, 513), (4, 32, 8, 513), (1, 32, 8, 2049))] == [
        one, heads2, heads4, heads4, heads3, one, one, split4, split4, split4, split4]


def test_attention_values_pairs_blocks_beyond_one_wave(be):
    """attention_values takes its paired kernel (two blocks of 512 threads a multiprocessor) on NVIDIA where the
    unpaired one's blocks (512 / threads of them a multiprocessor) would take more than two waves."""
    sms, nvidia = be._multiprocessors, be.platform != "hip"
    assert [be.attention_values_paired(blocks, threads) for blocks, threads in (
        (sms + 1, 512), (2 * sms, 512), (2 * sms + 1, 512), (4 * sms, 256), (4 * sms + 1, 256), (8 * sms + 1, 128))
    ] == [False, False, nvidia, False, nvidia, nvidia]


def test_attention_slice_gives_the_multiprocessors_blocks(be):
    """attention_scores takes the longest slice whose units x slices reach 3/2 of the multiprocessors' count,
    else the shortest; on an H200 (132), llama-8b's one row (8 units) over 1101 positions 64, over 4101 128, and
    8 rows (64 units) over 1101 256."""
    sms = be._multiprocessors
    least = -(-3 * sms // 2)
    assert [be.attention_slice(units, cache_len) for units, cache_len in (
        (1, 256 * least), (1, 256 * (least - 1)), (1, 128 * least), (1, 128 * (least - 1)), (least, 1),
        (least - 1, 1))] == [256, 128, 128, 64, 256, 64]
    if sms == 132:
        assert [be.attention_slice(*case) for case in ((8, 1101), (8, 4101), (64, 1101))] == [64, 128, 256]


@given(data=st.data())
def test_attention_equals_spec(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 16), label="rows")
    kv_heads = data.draw(st.integers(1, 3), label="kv_heads")
    heads = kv_heads * data.draw(st.integers(1, 4) | st.sampled_from([5, 8, 9]), label="group")  # 4 per unit
    dim = data.draw(st.sampled_from([1, 8, 31, 32, 33, 64, 80, 128, 130]), label="dim")
    # across 256-position chunks, and across the 1024 positions the kernel keeps in shared memory
    pos0 = data.draw(st.integers(0, 40) | st.integers(230, 600) | st.integers(1000, 1100), label="pos0")
    cache_len = pos0 + rows + data.draw(st.integers(0, 20), label="spare")
    scale = F32(10.0 ** data.draw(st.integers(-2, 1), label="log_scale"))
    q = floats(rng, (rows, heads, dim), "normal") * scale
    kc = floats(rng, (kv_heads, cache_len, dim), "normal") * scale
    vc = floats(rng, (kv_heads, cache_len, dim), data.draw(STYLES))
    launch = data.draw(ATTENTION_LAUNCHES, label="threads, plan, spread, paired, slice, rows a unit, column parts")
    expected = spec.attention(q, kc, vc, pos0)
    with attention_launch(be, *launch):
        got = be.to_host(be.attention(be.asarray(q), be.asarray(kc), be.asarray(vc), pos0))
    what = f"attention R={rows} H={heads} G={kv_heads} D={dim} pos0={pos0} launch={launch}"
    assert_same(got, expected, what, nan_equal=True)


@pytest.mark.parametrize("rows", [9, 12, 16])
def test_attention_of_forty_heads_as_planned_equals_spec(be, rows):
    """qwen2.5-32b's attention (40 heads of 128, 8 kv heads) at 9-16 rows as the backend plans it (on an H200,
    blocks of 2 or 3 query heads, two a multiprocessor), plain and quantized, across a chunk boundary."""
    rng = np.random.default_rng(rows)
    pos0 = 250
    q = rng.standard_normal((rows, 40, 128)).astype(F32)
    kc = rng.standard_normal((8, pos0 + rows, 128)).astype(F32)
    vc = rng.standard_normal((8, pos0 + rows, 128)).astype(F32)
    expected = spec.attention(q, kc, vc, pos0)
    args = (be.asarray(q), be.asarray(kc), be.asarray(vc), pos0)
    what = f"attention R={rows} plan={be.attention_plan(rows, 40, 8, pos0 + rows)}"
    assert_same(be.to_host(be.attention(*args)), expected, what)
    eq, ed = spec.quantize_q8_0(expected.reshape(rows, -1))
    gq, gd = be.attention_q8(*args)
    assert_same(be.to_host(gq), eq, what + " quants")
    assert_same(be.to_host(gd), ed, what + " scales")


ROW_ORDER_PLANS = ((AttnPlan("attention"), None, None), (AttnPlan("attention_heads", 2), None, None),
                   (AttnPlan("attention_heads", ATTN_HEADS), None, None), (AttnPlan("spread", 1), None, False),
                   (AttnPlan("spread", 1), None, True), (AttnPlan("spread", ATTN_HEADS), 1, False),
                   (AttnPlan("spread", ATTN_HEADS), 1, True), (AttnPlan("spread", 1), None, False, 128),
                   (AttnPlan("spread", ATTN_HEADS), 1, True, 256), (AttnPlan("spread", ATTN_HEADS), 1, False, None, 2),
                   (AttnPlan("spread", 1), None, False, None, 3), (AttnPlan("spread", 2), 2, None, 64, 2),
                   (AttnPlan("spread", ATTN_HEADS), None, False, None, 1, 4),
                   (AttnPlan("spread", 1), 1, False, 64, 2, 3))


@pytest.mark.parametrize("launch", [(t, *plan) for t in ATTN_THREAD_CHOICES for plan in ROW_ORDER_PLANS])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_attention_row_never_depends_on_the_rows_after_it(be, bad, launch):
    """Keys and values that later rows of the pass wrote as infinite or NaN leave the earlier rows' bits
    those of the spec's rows run alone (no +0 * inf terms for hidden positions), across a chunk boundary."""
    rng = np.random.default_rng(6)
    rows, pos0 = 6, 252
    q = rng.standard_normal((rows, 4, 64)).astype(F32)
    kc = rng.standard_normal((2, pos0 + rows, 64)).astype(F32)
    vc = rng.standard_normal((2, pos0 + rows, 64)).astype(F32)
    kc[:, pos0 + 3 :] = bad
    vc[:, pos0 + 3 :] = bad
    with attention_launch(be, *launch):
        got = be.to_host(be.attention(be.asarray(q), be.asarray(kc), be.asarray(vc), pos0))
    with np.errstate(all="ignore"):
        for r in range(rows):
            assert_same(got[r], spec.attention(q[r : r + 1], kc, vc, pos0 + r)[0], f"row {r}", nan_equal=True)
    assert np.isfinite(got[:3]).all()


# ---------------------------------------------------------------------------------------------- argmax
@given(data=st.data())
def test_argmax_equals_spec(be, data):
    rng = rng_from(data)
    rows, n = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 70000))
    x = floats(rng, (rows, n), data.draw(st.sampled_from(["normal", "ties"])))
    if data.draw(st.booleans(), label="tie"):  # the maximum twice (and as -0.0 / +0.0): lowest index wins
        x[:, rng.integers(0, n)] = x.max()
        x[:, rng.integers(0, n)] = x.max()
    assert_bits_equal(be.argmax(be.asarray(x)), spec.argmax(x), "argmax")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_argmax_rejects_nonfinite_like_spec(be, bad):
    x = np.zeros((3, 1000), F32)
    x[2, 999] = bad
    x[1, 5] = bad
    with pytest.raises(NumericsError) as cpu:
        spec.argmax(x)
    with pytest.raises(NumericsError) as gpu:
        be.argmax(be.asarray(x))
    assert str(gpu.value) == str(cpu.value)


@pytest.mark.parametrize("n", [2049, 128256, 600001])
def test_argmax_ties_across_parts_take_the_lowest_index(be, n):
    """A row is split into parts on many blocks (past 256 parts, each block loops): the maximum placed in
    three parts, and once as -0.0 beside +0.0 maxima in another row, still gives the lowest index."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((3, n)) - 10).astype(F32)
    for i in (n - 1, n // 2, 1000):
        x[0, i] = 5.0  # in the last part, the middle one and the first
    x[1, n - 3 :] = 7.0
    x[2] = -1.0
    x[2, [n - 1, 2047, 5]] = [0.0, -0.0, 0.0]
    assert_bits_equal(be.argmax(be.asarray(x)), spec.argmax(x), "argmax")
    assert spec.argmax(x).tolist() == [1000, n - 3, 5]


def test_argmax_of_signed_zeros_takes_the_first(be):
    x = np.array([[-0.0, 0.0, -0.0], [0.0, -0.0, 0.0], [-1.0, -0.0, 0.0]], F32)
    assert_bits_equal(be.argmax(be.asarray(x)), spec.argmax(x), "argmax")
