"""The GPU's fused kernels equal the compositions of spec ops they replace (refspec.backends.CpuBackend spells
each out), bit for bit, on drawn shapes and values, with their inputs given as the forward pass gives them:
column views of a stacked GEMV output (rows that lie apart), positions in device memory. Outputs are poisoned
before every launch (GpuBackend(poison=...))."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec import spec
from refspec.backends import CpuBackend
from refspec.gpu import gpu_available
from refspec.model import QK8_0

from test_gpu_kernels import ATTENTION_LAUNCHES, STYLES, assert_same, attention_launch, floats, random_q8, rng_from

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy sees none")]

F32 = np.float32
CPU = CpuBackend()


@pytest.fixture(scope="module", params=(0xFF, 0x5A), ids=lambda p: f"poison{p:#x}")
def be(request):
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=request.param)


def stacked(be, parts: list[np.ndarray], pad: int):
    """The arrays [R, n_i] side by side in one device array [R, sum n_i + pad] (as a stacked GEMV writes
    them, with `pad` more columns), returned as its column views."""
    rows = parts[0].shape[0]
    whole = np.concatenate(parts + [np.full((rows, pad), np.nan, F32)], axis=1)
    dev = be.asarray(whole)
    out, start = [], 0
    for p in parts:
        out.append(dev[:, start : start + p.shape[1]])
        start += p.shape[1]
    return out


@given(data=st.data())
def test_rope_kv_equals_rope_then_cache_write(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 20), label="rows")
    kv_heads = data.draw(st.integers(1, 4), label="kv_heads")
    heads = kv_heads * data.draw(st.integers(1, 4), label="group")
    dim = data.draw(st.sampled_from([8, 32, 48, 64, 128, 136, 256]), label="dim")
    n_rot = data.draw(st.sampled_from([r for r in (8, 16, 32, 64, 128, 256) if r <= dim]), label="n_rot")
    n_pos = data.draw(st.integers(rows, rows + 300), label="n_pos")
    pos0 = data.draw(st.integers(0, n_pos - rows), label="pos0")
    neox = data.draw(st.booleans(), label="neox")
    style = data.draw(STYLES, label="style")
    q = floats(rng, (rows, heads * dim), style)
    k = floats(rng, (rows, kv_heads * dim), style)
    v = floats(rng, (rows, kv_heads * dim), style)
    cos, sin = spec.rope_table(n_pos, n_rot, 10000.0)
    kc, vc = floats(rng, (kv_heads, n_pos, dim), "normal"), floats(rng, (kv_heads, n_pos, dim), "normal")
    gkc, gvc = be.asarray(kc), be.asarray(vc)
    qs, ks, vs = stacked(be, [q, k, v], pad=data.draw(st.sampled_from([0, 4, 32]), label="pad"))
    pos = be.asarray(np.array([pos0], np.int32)) if data.draw(st.booleans(), label="device pos") else pos0
    got = be.rope_kv(qs.reshape(rows, heads, dim), ks.reshape(rows, kv_heads, dim), vs.reshape(rows, kv_heads, dim),
                     gkc, gvc, pos, be.asarray(cos), be.asarray(sin), neox)
    expected = CPU.rope_kv(q.reshape(rows, heads, dim), k.reshape(rows, kv_heads, dim),
                           v.reshape(rows, kv_heads, dim), kc, vc, pos0, cos, sin, neox)
    what = f"rope_kv R={rows} H={heads} G={kv_heads} D={dim} rot={n_rot} pos0={pos0} neox={neox}"
    assert_same(be.to_host(got), expected, what + " (q)", nan_equal=True)
    assert_same(be.to_host(gkc), kc, what + " (k cache)", nan_equal=True)
    assert_same(be.to_host(gvc), vc, what + " (v cache)", nan_equal=True)


@given(data=st.data())
def test_attention_q8_equals_attention_then_quantize(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 16), label="rows")
    kv_heads = data.draw(st.integers(1, 3), label="kv_heads")
    heads = kv_heads * data.draw(st.integers(1, 4) | st.sampled_from([5, 8, 9]), label="group")  # 4 per unit
    dim = data.draw(st.sampled_from([32, 48, 64, 128, 256]), label="dim")  # 48: the unfused fallback
    if heads * dim % QK8_0:
        heads *= 2  # [R, H*D] rows must be whole blocks (forward.py's models have them)
    pos0 = data.draw(st.integers(0, 40) | st.integers(230, 600), label="pos0")  # across 256-position chunks
    cache_len = pos0 + rows + data.draw(st.integers(0, 20), label="spare")
    q = floats(rng, (rows, heads, dim), data.draw(STYLES, label="q"))
    kc = floats(rng, (kv_heads, cache_len, dim), "normal")
    vc = floats(rng, (kv_heads, cache_len, dim), data.draw(STYLES, label="v"))
    eq, ed = CPU.attention_q8(q, kc, vc, pos0)
    pos = be.asarray(np.array([pos0], np.int32)) if data.draw(st.booleans(), label="device pos") else pos0
    launch = data.draw(ATTENTION_LAUNCHES, label="threads, plan, spread, paired, slice, rows a unit, column parts")
    with attention_launch(be, *launch):
        gq, gd = be.attention_q8(be.asarray(q), be.asarray(kc), be.asarray(vc), pos)
    what = f"attention_q8 R={rows} H={heads} G={kv_heads} D={dim} pos0={pos0} launch={launch}"
    assert_same(be.to_host(gq), eq, what + " (quants)")
    assert_same(be.to_host(gd), ed, what + " (scales)", nan_equal=True)  # a NaN scale's payload is unspecified


@given(data=st.data())
def test_silu_mul_q8_equals_silu_mul_then_quantize(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 20), label="rows")
    n = data.draw(st.integers(1, 120), label="blocks") * QK8_0
    style = data.draw(STYLES, label="style")
    gate, up = floats(rng, (rows, n), style), floats(rng, (rows, n), style)
    eq, ed = CPU.silu_mul_q8(gate, up)
    if data.draw(st.booleans(), label="views"):
        g, u = stacked(be, [gate, up], pad=data.draw(st.sampled_from([0, 32]), label="pad"))
    else:
        g, u = be.asarray(gate), be.asarray(up)
    gq, gd = be.silu_mul_q8(g, u)
    assert_same(be.to_host(gq), eq, f"silu_mul_q8 R={rows} N={n} (quants)")
    assert_same(be.to_host(gd), ed, f"silu_mul_q8 R={rows} N={n} (scales)")


@given(data=st.data())
def test_q8_gemv_add_equals_gemv_then_add(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 16) | st.integers(17, 40), label="rows")
    n = data.draw(st.integers(1, 300), label="n")
    k = data.draw(st.integers(1, 150), label="blocks") * QK8_0
    w = random_q8(rng, n, k)
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), data.draw(STYLES, label="x")))
    x = floats(rng, (rows, n), data.draw(STYLES, label="residual"))
    expected = spec.add(x, spec.q8_gemv(w, xq, xd))
    got = be.q8_gemv_add(be.asarray(x), be.upload_q8(w), be.asarray(xq), be.asarray(xd))
    assert_same(be.to_host(got), expected, f"q8_gemv_add R={rows} N={n} K={k}", nan_equal=True)


@settings(max_examples=20)
@given(data=st.data())
def test_stacked_gemv_equals_separate_gemvs(be, data):
    """q8_gemv_many over an uploaded stack (one launch) gives each matrix's spec.q8_gemv."""
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 16), label="rows")
    k = data.draw(st.integers(1, 100), label="blocks") * QK8_0
    ws = [random_q8(rng, data.draw(st.integers(1, 200), label=f"n{i}"), k) for i in range(3)]
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
    parts = [m for _, m in be.upload_stack(ws)]
    got = be.q8_gemv_many(parts, be.asarray(xq), be.asarray(xd))
    for i, (w, g) in enumerate(zip(ws, got)):
        assert_same(be.to_host(g), spec.q8_gemv(w, xq, xd), f"stacked gemv, part {i} R={rows} K={k}")


@settings(max_examples=30)
@given(data=st.data())
def test_stacked_gemv_with_biases_equals_gemvs_then_adds(be, data):
    """q8_gemv_many_bias over a stack uploaded with its biases (qwen2's Q/K/V: one launch, the adds in the
    GEMV's epilogue from the biases repeated over the rows) gives spec.add(spec.q8_gemv(w), b) for each part:
    more rows than one launch takes (their launches reuse the repeated rows), the tensor-core GEMV or not, and
    biases not uploaded with the stack (a GEMV, then adds)."""
    rng = rng_from(data)
    rows = data.draw(st.one_of(st.integers(1, 16), st.integers(17, 40)), label="rows")
    k = data.draw(st.integers(1, 50), label="block pairs") * 2 * QK8_0
    ws = [random_q8(rng, data.draw(st.integers(1, 150), label=f"n{i}"), k) for i in range(3)]
    biases = [floats(rng, (w.shape[0],), data.draw(STYLES, label=f"bias{i}")) for i, w in enumerate(ws)]
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), data.draw(STYLES, label="x")))
    parts = [m for _, m in be.upload_stack(ws)]
    uploaded = be.upload_stack_biases(parts, biases)
    assert all(p.bias is b for p, b in zip(parts, uploaded)) and parts[0].stack.bias_rows.shape[0] == 16
    given_biases = uploaded if data.draw(st.booleans(), label="uploaded biases") else [be.asarray(b) for b in biases]
    saved = be.mma_min_weights
    if data.draw(st.booleans(), label="tensor cores") and be.mma_available:
        be.mma_min_weights = 0
    try:
        got = be.q8_gemv_many_bias(parts, given_biases, be.asarray(xq), be.asarray(xd))
    finally:
        be.mma_min_weights = saved
    for i, (w, b, g) in enumerate(zip(ws, biases, got)):
        expected = spec.add(spec.q8_gemv(w, xq, xd), b)
        assert_same(be.to_host(g), expected, f"gemv + bias, part {i} R={rows} K={k}", nan_equal=True)


@given(data=st.data())
def test_add_on_column_views_equals_spec(be, data):
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 20), label="rows")
    n = data.draw(st.integers(1, 40), label="n") * 4
    x, other = floats(rng, (rows, n), data.draw(STYLES, label="x")), floats(rng, (rows, 8), "normal")
    y = floats(rng, (n,), "normal")
    view = stacked(be, [x, other], pad=0)[0]
    assert_same(be.to_host(be.add(view, be.asarray(y))), spec.add(x, y), f"add on a view R={rows} N={n}")


@settings(max_examples=10)
@given(data=st.data())
def test_rmsnorm_q8_of_rows_too_long_to_stage_equals_spec(be, data):
    """rmsnorm_q8_wide (rows longer than the shared memory the staged kernel uses) gives the same bits."""
    import refspec.gpu

    rng = rng_from(data)
    rows = data.draw(st.integers(1, 8), label="rows")
    k = data.draw(st.integers(1, 160), label="blocks") * QK8_0
    x, w = floats(rng, (rows, k), data.draw(STYLES, label="x")), floats(rng, (k,), "normal")
    eq, ed = spec.quantize_q8_0(spec.rmsnorm(x, w, 1e-5))
    saved, refspec.gpu.RMSNORM_Q8_SHARED_BYTES = refspec.gpu.RMSNORM_Q8_SHARED_BYTES, 0
    try:
        gq, gd = be.rmsnorm_q8(be.asarray(x), be.asarray(w), 1e-5)
    finally:
        refspec.gpu.RMSNORM_Q8_SHARED_BYTES = saved
    assert_same(be.to_host(gq), eq, f"rmsnorm_q8_wide R={rows} K={k} (quants)")
    assert_same(be.to_host(gd), ed, f"rmsnorm_q8_wide R={rows} K={k} (scales)", nan_equal=True)


@settings(max_examples=60)
@given(data=st.data())
def test_tensor_core_gemv_equals_spec(be, data):
    """q8_gemv_mma (integer mma; NVIDIA sm_80+) gives spec.q8_gemv's bits: tiles cut by N, R and the
    block count, extreme scales, with and without the residual, and few thread blocks, each taking many tiles
    in one stream of rounds (rows of one round only: the first requests already cross into later tiles)."""
    from refspec.gpu_mappings import gemv_mma

    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 16), label="rows")
    n = data.draw(st.integers(1, 300), label="n")
    pairs = st.one_of(st.integers(1, 16), st.integers(1, 200))  # 16 pairs: one round of 32 blocks
    k = data.draw(pairs, label="block pairs") * 2 * QK8_0  # its scales are copied in pairs
    max_blocks = data.draw(st.sampled_from([None, 1, 2, 3, 7]), label="max blocks")
    w = random_q8(rng, n, k, data.draw(st.sampled_from(["normal", "extreme"]), label="scales"))
    xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), data.draw(STYLES, label="x")))
    expected = spec.q8_gemv(w, xq, xd)
    y = be._empty((rows, n))
    base = None
    if data.draw(st.booleans(), label="residual"):
        x = floats(rng, (rows, n), "normal")
        expected, base = spec.add(x, expected), be.asarray(x)
    be.launch_gemv(gemv_mma(rows), be.upload_q8(w), be.asarray(xq), be.asarray(xd), y, base,
                   max_blocks=max_blocks)
    assert_same(be.to_host(y), expected, f"q8_gemv_mma R={rows} N={n} K={k} blocks<={max_blocks}", nan_equal=True)


def test_tensor_cores_take_large_matrices_from_3_rows(be):
    """gemv_config: the dp4a kernel below GEMV_MMA_MIN_ROWS (3) rows and for small matrices (the default model's:
    faster there), the tensor-core one from 3 rows of a matrix of 4 M weights or more."""
    from refspec.gpu_mappings import GEMV_CONFIGS, GEMV_MMA_MIN_ROWS, GEMV_MMA_MIN_WEIGHTS, gemv_mma, two_streams

    assert GEMV_MMA_MIN_ROWS == 3
    assert be.gemv_config(2, 4096, 4096) == GEMV_CONFIGS[2]
    assert be.gemv_config(8, 576, 3072) == GEMV_CONFIGS[8]  # 1.8 M weights
    assert be.gemv_config(16, 64, GEMV_MMA_MIN_WEIGHTS // 64 - 1) == GEMV_CONFIGS[16]
    for rows in (3, 7, 8):
        big = gemv_mma(rows) if be.mma_available else GEMV_CONFIGS[rows]
        assert be.gemv_config(rows, 4096, 4096) == big, rows
    # (65536 x 64: 2048 tall tiles, which stream: two streams of 16-row tiles a block instead)
    assert be.gemv_config(16, 64, GEMV_MMA_MIN_WEIGHTS // 64) == (two_streams(16) if be.mma_available else
                                                                   GEMV_CONFIGS[16])


def test_long_rows_of_a_short_matrix_take_more_thread_blocks(be):
    """gemv_config: 5-8 rows of more than 32 blocks each against a matrix that would give fewer thread blocks
    than multiprocessors take GEMV_FEW_BLOCKS (the default model's down projection); shorter rows, more weight
    rows, other row counts keep GEMV_CONFIGS."""
    from refspec.gpu_mappings import GEMV_CONFIGS, GEMV_FEW_BLOCKS, GEMV_FEW_BLOCKS_MIN_K

    per_block = GEMV_CONFIGS[8].weight_rows_per_block()
    short = per_block * (be._multiprocessors - 1)  # one block too few
    for rows in range(5, 9):
        assert be.gemv_config(rows, GEMV_FEW_BLOCKS_MIN_K, short) == GEMV_FEW_BLOCKS[rows]
        assert be.gemv_config(rows, GEMV_FEW_BLOCKS_MIN_K - 32, short) == GEMV_CONFIGS[rows]
        assert be.gemv_config(rows, GEMV_FEW_BLOCKS_MIN_K, per_block * be._multiprocessors) == GEMV_CONFIGS[rows]
    for rows in (1, 4, 9, 16):
        assert be.gemv_config(rows, GEMV_FEW_BLOCKS_MIN_K, short) == GEMV_CONFIGS[rows]
    down = GEMV_FEW_BLOCKS[8] if be._multiprocessors > 576 // per_block else GEMV_CONFIGS[8]  # 36 blocks
    assert be.gemv_config(8, 1536, 576) == down  # the default model's down projection


def test_one_row_of_short_rows_takes_deeper_weight_loads(be):
    """gemv_config: one row of 3-5 rounds of the lanes (K 3072..5120) on CUDA takes 3 rounds of weights in flight
    where that grid fits the GPU at once, else 2 where the usual grid does not fit and that one does, else the
    usual mapping; other K, other row counts and short_rows off keep GEMV_CONFIGS."""
    from refspec.gpu_mappings import GEMV_CONFIGS, GEMV_SHORT_ROWS, GEMV_SHORT_ROWS_K

    if be.platform != "cuda":
        assert be.gemv_config(1, 4096, 4096) == GEMV_CONFIGS[1]
        return
    per_block = GEMV_CONFIGS[1].weight_rows_per_block()
    deep, mid, usual = (be._resident(c) for c in (GEMV_SHORT_ROWS[3], GEMV_SHORT_ROWS[2], GEMV_CONFIGS[1]))
    seen = set()
    for blocks in sorted({deep, deep + 1, usual, usual + 1, mid, mid + 1}):
        want = (GEMV_SHORT_ROWS[3] if blocks <= deep else GEMV_SHORT_ROWS[2] if usual < blocks <= mid
                else GEMV_CONFIGS[1])
        seen.add(want)
        for k in (GEMV_SHORT_ROWS_K[0], 4096, GEMV_SHORT_ROWS_K[1]):
            assert be.gemv_config(1, k, blocks * per_block) == want, (blocks, k)
            assert be.gemv_config(2, k, blocks * per_block) == GEMV_CONFIGS[2]
    if deep < usual < mid:  # the H200 with nvcc 13 (88, 76, 69 registers: 5, 6, 7 blocks a multiprocessor)
        assert len(seen) == 3
    for k in (GEMV_SHORT_ROWS_K[0] - 32, GEMV_SHORT_ROWS_K[1] + 32):
        assert be.gemv_config(1, k, deep * per_block) == GEMV_CONFIGS[1]
    be.short_rows = False
    try:
        assert be.gemv_config(1, 4096, deep * per_block) == GEMV_CONFIGS[1]
    finally:
        be.short_rows = True


def test_one_long_row_in_one_wave_takes_even_blocks(be):
    """gemv_config: one or two rows of GEMV_EVEN_MIN_K or more on CUDA, over a grid of one wave of more blocks
    than multiprocessors whose even share is fewer blocks a multiprocessor than fit and can be held by shared
    memory a launch may ask for (_even_shared, the least such KiB), take GEMV_CONFIGS[rows] with `even`; shorter
    rows, shares no such memory holds, grids of one block a multiprocessor or of more than a wave, and even_blocks off keep
    GEMV_CONFIGS."""
    from dataclasses import replace

    from refspec.gpu_mappings import GEMV_CONFIGS, GEMV_EVEN_MIN_K

    per_block = GEMV_CONFIGS[1].weight_rows_per_block()
    assert GEMV_CONFIGS[2].weight_rows_per_block() == per_block
    if be.platform != "cuda":
        assert be.gemv_config(1, 14336, 4096) == GEMV_CONFIGS[1]
        return
    for rows in (1, 2):
        usual = GEMV_CONFIGS[rows]
        even = replace(usual, even=True)
        sms, wave = be._multiprocessors, be._resident(usual, rows)
        seen = set()
        for blocks in sorted({sms, sms + 1, 2 * sms + 1, 3 * sms, wave - sms, wave - 1, wave, wave + 1}):
            kernel = be._gemv_function(usual, rows)
            per = -(-blocks // sms)
            shared = be._even_shared(kernel, even, rows, blocks)
            if shared:  # the least whole KiB that holds a multiprocessor to `per` blocks
                assert kernel.resident_blocks(usual.threads(), shared) <= per < kernel.resident_blocks(
                    usual.threads(), shared - 1024), (rows, blocks, shared)
            want = even if sms < blocks <= wave and per * sms < wave and shared > 0 else usual
            seen.add(want)
            for k in (GEMV_EVEN_MIN_K, 14336):
                assert be.gemv_config(rows, k, blocks * per_block) == want, (rows, blocks, k)
            assert be.gemv_config(rows, GEMV_EVEN_MIN_K - 32, blocks * per_block) == usual
        assert seen == {even, usual}, rows
    assert be.gemv_config(3, 14336, 4096) != replace(GEMV_CONFIGS[3], even=True)
    be.even_blocks = False
    try:
        assert be.gemv_config(1, 14336, 4096) == GEMV_CONFIGS[1]
    finally:
        be.even_blocks = True


def test_even_blocks_gemv_equals_spec_and_holds_the_share(be):
    """A one- or two-row GEMV with `even` (dynamic shared memory it never touches, so that a multiprocessor holds
    at most ceil(blocks / multiprocessors) blocks) gives spec.q8_gemv's bits, with and without the residual; the
    shared memory asked does hold the share (4 blocks a multiprocessor here) and a plain launch's would not."""
    from dataclasses import replace

    from refspec.gpu_mappings import GEMV_CONFIGS

    if be.platform != "cuda":
        pytest.skip("the occupancy calculator is CUDA's")
    sms, k = be._multiprocessors, 8192
    rng = np.random.default_rng(11)
    for rows in (1, 2):
        config = replace(GEMV_CONFIGS[rows], even=True)
        blocks = 3 * sms + 1  # 4 a multiprocessor at most
        n = blocks * config.weight_rows_per_block() - 3  # (the last group computes rows past the end, never stored)
        kernel = be._gemv_function(config, rows)
        shared = be._even_shared(kernel, config, rows, blocks)
        assert shared > 0 and kernel.resident_blocks(config.threads(), shared) == 4 < kernel.resident_blocks(
            config.threads(), 0)
        w = random_q8(rng, n, k)
        xq, xd = spec.quantize_q8_0(floats(rng, (rows, k), "normal"))
        x = floats(rng, (rows, n), "normal")
        for base in (None, x):
            expected = spec.q8_gemv(w, xq, xd) if base is None else spec.add(x, spec.q8_gemv(w, xq, xd))
            y = be._empty((rows, n))
            be.launch_gemv(config, be.upload_q8(w), be.asarray(xq), be.asarray(xd), y,
                           None if base is None else be.asarray(base))
            assert_same(be.to_host(y), expected, f"even q8_gemv R={rows} N={n} residual={base is not None}",
                        nan_equal=True)


def test_tensor_core_gemv_refuses_odd_block_counts(be):
    """K/32 odd: q8_gemv_mma refuses (its scale copies need pairs of blocks), and q8_gemv with tensor cores
    on takes the dp4a kernel for it, with the spec's bits."""
    from refspec.gpu import GpuBackend
    from refspec.gpu_mappings import GEMV_MMA

    if not be.mma_available:
        pytest.skip("no integer tensor cores")
    rng = np.random.default_rng(3)
    w = random_q8(rng, 40, 3 * QK8_0)
    xq, xd = spec.quantize_q8_0(floats(rng, (12, 3 * QK8_0), "normal"))
    with pytest.raises(ValueError, match="not a multiple of 64"):
        be.launch_gemv(GEMV_MMA, be.upload_q8(w), be.asarray(xq), be.asarray(xd), be._empty((12, 40)))
    mma = GpuBackend(mma_min_rows=1, mma_min_weights=0)
    got = mma.to_host(mma.q8_gemv(mma.upload_q8(w), mma.asarray(xq), mma.asarray(xd)))
    assert_same(got, spec.q8_gemv(w, xq, xd), "q8_gemv, tensor cores on, K=96")
