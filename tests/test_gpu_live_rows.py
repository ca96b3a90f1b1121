"""Kernels launched under GpuBackend.live_rows (a chained speculative pass computing only the rows up to its
guesses, kernels_raw/portable.h rs_live_rows): each live row's output has the bits of the same launch without
it, and no output of a row past the live count is written (outputs are poisoned before every launch, so those
rows must still hold the poison). The live count is read from device memory when the kernel runs: the same
launch serves every count."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec import spec
from refspec.gpu import gpu_available
from refspec.gpu_mappings import GEMV_CONFIGS, GEMV_FEW_BLOCKS, GEMV_MAX_ROWS, GemvConfig
from refspec.model import QK8_0

from test_gpu_kernels import ATTENTION_LAUNCHES, STYLES, assert_same, attention_launch, floats, random_q8, rng_from

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy sees none")]

F32 = np.float32
POISON = 0xA5


@pytest.fixture(scope="module")
def be():
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=POISON)


@contextlib.contextmanager
def live(be, count: int):
    """Launches inside compute the first `count` rows (a device int32 [1] holding it)."""
    be.live_rows(be.asarray(np.array([count], np.int32)))
    try:
        yield
    finally:
        be.live_rows(None)


def assert_live(be, full, part, count: int, what: str, nan_equal: bool = False) -> None:
    """Rows [:count] of `part` (a launch under live_rows) equal `full`'s bit for bit; rows [count:] still hold
    the poison."""
    full, part = be.to_host(full), be.to_host(part)
    assert_same(part[:count], full[:count], f"{what}: live rows", nan_equal)
    dead = np.ascontiguousarray(part[count:]).view(np.uint8)
    assert np.all(dead == POISON), f"{what}: a row past the {count} live ones was written"


def draw_live(data):
    """A generator, a launch's rows (1..16, the widths of a chained pass: 1 a greedy step) and its live count
    (0..rows; 0: the pass queued past a run's end)."""
    rng = rng_from(data)
    rows = data.draw(st.integers(1, 16), label="rows")
    return rng, rows, data.draw(st.integers(0, rows), label="live")


STAGED = GemvConfig("q8_gemv_staged", 2, split=2)  # a q8_gemv_staged variant (`refspec bench gemv --variants`)


@settings(max_examples=60)
@given(data=st.data())
def test_gemv_computes_only_the_live_rows(be, data):
    """The dp4a GEMVs the backend launches for each row count (GEMV_CONFIGS, and GEMV_FEW_BLOCKS for 5-8 rows),
    and q8_gemv_staged, with and without the residual add in its epilogue: a live count of 1 takes the one-row
    path of a group of several rows (q8_gemv), 2..8 of a group of 9..12 the 8-row path, any other count the
    group's own. (Few row counts for q8_gemv_staged: each is a template compiled at run time.)"""
    rng = rng_from(data)
    if data.draw(st.booleans(), label="staged"):
        config, rows = STAGED, data.draw(st.sampled_from([2, 7, GEMV_MAX_ROWS]), label="rows")
    else:
        rows = data.draw(st.integers(1, GEMV_MAX_ROWS), label="rows")
        configs = [GEMV_CONFIGS[rows]] + ([GEMV_FEW_BLOCKS[rows]] if rows in GEMV_FEW_BLOCKS else [])
        config = data.draw(st.sampled_from(configs), label="config")
    count = data.draw(st.integers(0, rows) | st.just(1), label="live")
    n = data.draw(st.integers(1, 200), label="n")
    k = data.draw(st.integers(1, 80), label="blocks") * QK8_0
    w = be.upload_q8(random_q8(rng, n, k, data.draw(st.sampled_from(["normal", "edges"]), label="scales")))
    xq, xd = (be.asarray(a) for a in spec.quantize_q8_0(floats(rng, (rows, k), data.draw(STYLES, label="x"))))
    base = be.asarray(floats(rng, (rows, n), "normal")) if data.draw(st.booleans(), label="base") else None
    full, part = (be._empty((rows, n)) for _ in range(2))
    be.launch_gemv(config, w, xq, xd, full, base)
    with live(be, count):
        be.launch_gemv(config, w, xq, xd, part, base)
    assert_live(be, full, part, count, f"{config.name(rows)} R={rows} live={count} N={n} K={k}", nan_equal=True)


def test_gemv_of_more_rows_than_one_launch_refuses_live_rows(be):
    w = be.upload_q8(random_q8(np.random.default_rng(0), 8, 64))
    xq, xd = spec.quantize_q8_0(np.ones((GEMV_MAX_ROWS + 1, 64), F32))
    with live(be, 1), pytest.raises(ValueError, match="one launch"):
        be.q8_gemv(w, be.asarray(xq), be.asarray(xd))


@given(data=st.data())
def test_rmsnorm_q8_computes_only_the_live_rows(be, data):
    rng, rows, count = draw_live(data)
    k = data.draw(st.integers(1, 200) | st.just(12288 // QK8_0 + 1), label="blocks") * QK8_0  # + too long to stage
    x = be.asarray(floats(rng, (rows, k), data.draw(STYLES, label="x")))
    w = be.asarray(floats(rng, (k,), "normal"))
    fq, fd = be.rmsnorm_q8(x, w, F32(1e-6))
    with live(be, count):
        pq, pd = be.rmsnorm_q8(x, w, F32(1e-6))
    assert_live(be, fq, pq, count, f"rmsnorm_q8 R={rows} live={count} K={k} (quants)")
    assert_live(be, fd, pd, count, f"rmsnorm_q8 R={rows} live={count} K={k} (scales)", nan_equal=True)


@given(data=st.data())
def test_silu_mul_q8_computes_only_the_live_rows(be, data):
    rng, rows, count = draw_live(data)
    n = data.draw(st.integers(1, 120), label="blocks") * QK8_0
    both = be.asarray(floats(rng, (rows, 2 * n), data.draw(STYLES, label="style")))
    gate, up = both[:, :n], both[:, n:]  # views of one stacked output, as the forward pass gives them
    fq, fd = be.silu_mul_q8(gate, up)
    with live(be, count):
        pq, pd = be.silu_mul_q8(gate, up)
    assert_live(be, fq, pq, count, f"silu_mul_q8 R={rows} live={count} N={n} (quants)")
    assert_live(be, fd, pd, count, f"silu_mul_q8 R={rows} live={count} N={n} (scales)", nan_equal=True)


@given(data=st.data())
def test_rope_kv_writes_only_the_live_rows(be, data):
    """Rotated queries of the live rows; keys and values written at their positions only (the cache rows of
    the others keep what they held)."""
    rng, rows, count = draw_live(data)
    kv_heads = data.draw(st.integers(1, 3), label="kv_heads")
    heads = kv_heads * data.draw(st.integers(1, 4), label="group")
    dim = data.draw(st.sampled_from([32, 64, 128]), label="dim")
    n_pos = rows + data.draw(st.integers(0, 100), label="spare")
    pos0 = data.draw(st.integers(0, n_pos - rows), label="pos0")
    cos, sin = (be.asarray(t) for t in spec.rope_table(n_pos, dim, 10000.0))
    qkv = be.asarray(floats(rng, (rows, (heads + 2 * kv_heads) * dim), "normal"))
    q = qkv[:, : heads * dim].reshape(rows, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(rows, kv_heads, dim)
    v = qkv[:, (heads + kv_heads) * dim :].reshape(rows, kv_heads, dim)
    old = floats(rng, (kv_heads, n_pos, dim), "normal")
    pos = be.asarray(np.array([pos0], np.int32))
    caches = [(be.asarray(old), be.asarray(old)) for _ in range(2)]
    fq = be.rope_kv(q, k, v, *caches[0], pos, cos, sin, True)
    with live(be, count):
        pq = be.rope_kv(q, k, v, *caches[1], pos, cos, sin, True)
    what = f"rope_kv R={rows} live={count} H={heads} G={kv_heads} D={dim} pos0={pos0}"
    assert_live(be, fq, pq, count, what + " (q)")
    for full, part in zip(caches[0], caches[1]):
        full, part = be.to_host(full), be.to_host(part)
        assert_same(part[:, : pos0 + count], full[:, : pos0 + count], what + " (cache up to the live rows)")
        assert_same(part[:, pos0 + count :], old[:, pos0 + count :], what + " (cache past the live rows)")


@given(data=st.data())
def test_attention_q8_computes_only_the_live_rows(be, data):
    """Every way attention launches (one kernel, or scores and values spread over positions)."""
    rng, rows, count = draw_live(data)
    kv_heads = data.draw(st.integers(1, 3), label="kv_heads")
    heads = kv_heads * data.draw(st.integers(1, 4) | st.sampled_from([5, 8, 9]), label="group")
    dim = data.draw(st.sampled_from([32, 64, 128]), label="dim")
    pos0 = data.draw(st.integers(0, 40) | st.integers(230, 600), label="pos0")
    cache_len = pos0 + rows + data.draw(st.integers(0, 20), label="spare")
    q = be.asarray(floats(rng, (rows, heads, dim), data.draw(STYLES, label="q")))
    kc, vc = (be.asarray(floats(rng, (kv_heads, cache_len, dim), "normal")) for _ in range(2))
    pos = be.asarray(np.array([pos0], np.int32))
    launch = data.draw(ATTENTION_LAUNCHES, label="threads, plan, spread, paired, slice, rows a unit, column parts")
    with attention_launch(be, *launch):
        fq, fd = be.attention_q8(q, kc, vc, pos)
        with live(be, count):
            pq, pd = be.attention_q8(q, kc, vc, pos)
    what = f"attention_q8 R={rows} live={count} H={heads} G={kv_heads} D={dim} pos0={pos0} launch={launch}"
    assert_live(be, fq, pq, count, what + " (quants)")
    assert_live(be, fd, pd, count, what + " (scales)", nan_equal=True)


@given(data=st.data())
def test_argmax_computes_only_the_live_rows(be, data):
    rng, rows, count = draw_live(data)
    n = data.draw(st.integers(1, 70000), label="n")
    logits = be.asarray(floats(rng, (rows, n), data.draw(STYLES, label="style")))
    full = be.argmax_device(logits)
    part = be._empty((rows, 2), np.int32)
    with live(be, count):
        be.argmax_device(logits, part)
    assert_live(be, full, part, count, f"argmax R={rows} live={count} N={n}")
