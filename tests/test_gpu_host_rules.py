"""The tensor-core GEMV's host-side rules (GpuBackend._mma_config, _mma_grid) with stand-in kernels, on any
machine: which mapping a row count and matrix take, and how many blocks a launch gets; and attention's plan
(GpuBackend.attention_plan) and its slices (GpuBackend.attention_slice), which need only the multiprocessors' count."""
from dataclasses import replace

import pytest

from refspec.gpu import GpuBackend
from refspec.gpu_mappings import (GEMV_MMA, GEMV_MMA_NARROW, GEMV_MMA_NARROW_MIN_K, GEMV_MMA_RESIDENT,
                                  GEMV_MMA_STREAM_WAVES, GEMV_MMA_TALL, GEMV_MMA_TALL_LONG_MIN_K,
                                  GEMV_MMA_TALL_LONG_ROWS, GEMV_MMA_TWO_STREAMS, GEMV_MMA_TWO_STREAMS_16,
                                  ATTN_VALUES_ROWS, AttnPlan, attention_units)

SMS = 132
SM_SHARED, BLOCK_SHARED = 228 * 1024, 227 * 1024  # an sm_90 multiprocessor's shared memory; a block's most
RESIDENT_MMA, RESIDENT_TALL, TWO_STREAMS = GEMV_MMA_RESIDENT, replace(GEMV_MMA_TALL, resident=True), GEMV_MMA_TWO_STREAMS
TWO_16 = GEMV_MMA_TWO_STREAMS_16


class StandInKernel:
    """An occupancy calculator's answers as on sm_90: `fit` blocks a multiprocessor by their registers, fewer where
    their shared memory (and 1 KiB each that the GPU keeps) does not fit 228 KiB. It records the calls, and
    refuses an occupancy question before the opt-in and an opt-in past 227 KiB."""

    def __init__(self, fit: int):
        self.fit, self.allowed, self.calls = fit, 48 * 1024, []

    def shared_limit(self):
        return BLOCK_SHARED

    def allow_shared(self, nbytes):
        assert nbytes <= BLOCK_SHARED, "an opt-in past what a block may have"
        self.calls.append(("allow", nbytes))
        self.allowed = max(self.allowed, nbytes)

    def resident_blocks(self, threads, shared):
        self.calls.append(("resident", shared))
        assert shared <= self.allowed, "occupancy asked before the opt-in"
        return max(1, min(self.fit, SM_SHARED // (shared + 1024)))


def backend(resident_activations: bool = True, fit: int | None = None) -> GpuBackend:
    """A GpuBackend of SMS multiprocessors whose GEMV kernels are stand-ins: the tall tiles' (236 registers) and
    the blocks of two streams (512 threads) fit once a multiprocessor, the others twice (or `fit` times, all of
    them)."""
    kernels = {}
    be = object.__new__(GpuBackend)
    be._multiprocessors = SMS
    be.resident_activations = resident_activations
    be._mma_configs = {}
    be._gemv_function = lambda config, rows: kernels.setdefault(
        config, StandInKernel(fit=fit or (1 if config.split == 2 or config.groups == 2 else 2)))
    be.kernels = kernels
    return be


@pytest.mark.parametrize("rows", range(1, 17))
def test_mma_config_takes_tall_tiles_where_they_fit_at_once_or_stream(rows):
    be = backend(resident_activations=False)
    tall = 2 * 16  # weight rows of a tall tile
    for tiles, expected in ((1, GEMV_MMA_TALL), (SMS, GEMV_MMA_TALL), (SMS + 1, GEMV_MMA),
                            (GEMV_MMA_STREAM_WAVES * SMS, GEMV_MMA), (GEMV_MMA_STREAM_WAVES * SMS + 1, GEMV_MMA_TALL)):
        got = be._mma_config(rows, tiles * tall, 4096)
        assert got == (GEMV_MMA if rows <= 8 else expected), (rows, tiles)
    for kernel in be.kernels.values():  # every occupancy question after its opt-in (the stand-in checks)
        assert kernel.calls[0][0] == "allow"


@pytest.mark.parametrize("rows, n, k, expected", [
    (8, 4096, 4096, GEMV_MMA),  # 256 tiles, one wave of blocks (264): a block a tile, nothing to keep
    (8, 6144, 4096, TWO_STREAMS),  # 384 tiles: two a stream, two streams a block sharing the activations
    (8, 28672, 4096, TWO_STREAMS),  # 1792 tiles streamed by 264 streams
    (8, 152064, 3584, TWO_STREAMS),
    (3, 28672, 5120, TWO_STREAMS),
    (8, 28672, 6144, TWO_STREAMS),  # 6 rounds: the most whose slots fit beside two streams' stage buffers
    (8, 28672, 7168, GEMV_MMA),  # 7 (and one block a multiprocessor of one stream, too)
    (8, 28672, 14336, GEMV_MMA),  # 14 rounds of slots: a block a multiprocessor instead of two (and 1792 tiles:
    # more than two waves, so not GEMV_MMA_NARROW)
    (8, 4096, 14336, GEMV_MMA_NARROW),  # llama-8b's down projection: 256 tiles of rows of 14336
    (3, 4096, 14336, GEMV_MMA_NARROW),
    (4, 5120, 27648, GEMV_MMA_NARROW),  # qwen2.5-32b's: 320 tiles (a block of one tile a multiprocessor twice: 264)
    (8, 2 * 264 * 16, 8192, GEMV_MMA_NARROW),  # two waves of tiles of rows of GEMV_MMA_NARROW_MIN_K
    (8, 2 * 264 * 16 + 1, 8192, GEMV_MMA),  # a tile more
    (8, 4096, 8192 - 64, GEMV_MMA),  # rows a pair of blocks shorter
    (3, 301 * 16, 8192 + 192, TWO_STREAMS),  # where 3 rows' activations fit slots beside two streams: those first
    (12, 4096, 14336, GEMV_MMA_TALL),  # 9-16 rows: as before
    (16, 152064, 3584, TWO_16),  # tall tiles stream: two streams of 16-row tiles a block instead
    (16, 28672, 4096, TWO_16),  # 896 tall tiles
    (9, 28672, 4096, TWO_16),
    (16, 27648, 5120, TWO_16),  # 5 rounds: the most whose slots of 16 rows fit beside two rounds of two streams
    (16, 28672, 6144, GEMV_MMA_TALL),  # 6 do not: tall tiles
    (12, 28672, 6144, TWO_16),  # (slots of 12 rows: 6 rounds fit)
    (16, 6144, 4096, TWO_16),  # 1-2 waves of tall tiles: two streams of 16-row tiles too (two tiles a stream)
    (16, 7168, 5120, TWO_16),
    (16, 6144, 6144, GEMV_MMA),  # where those do not fit: GEMV_MMA, whose blocks do not stream at 16 rows
    (12, 4096, 4096, GEMV_MMA_TALL),  # 128 tall tiles: one wave
    (16, 5120, 27648, GEMV_MMA_TALL),  # 1-2 waves of tall tiles of long rows (no room for slots): tall tiles at
    (13, 5120, 27648, GEMV_MMA_TALL),  # 9 and 13-16 rows (GEMV_MMA_TALL_LONG_ROWS)
    (9, 5120, 17408, GEMV_MMA_TALL),
    (12, 5120, 27648, GEMV_MMA),  # at 10-12 rows GEMV_MMA
    (10, 5120, 17408, GEMV_MMA),
    (16, 5120, 16384 - 64, GEMV_MMA),  # rows a pair of blocks shorter than GEMV_MMA_TALL_LONG_MIN_K
])
def test_mma_config_keeps_activations_resident_where_blocks_stream(rows, n, k, expected):
    assert backend()._mma_config(rows, n, k) == expected
    assert backend(resident_activations=False)._mma_config(rows, n, k) == unkept(rows, n, k, expected)
    assert RESIDENT_MMA == replace(GEMV_MMA, resident=True)
    assert TWO_STREAMS == replace(GEMV_MMA, occ=4, resident=True, groups=2)
    assert TWO_16 == replace(GEMV_MMA, occ=2, resident=True, groups=2)
    assert GEMV_MMA_NARROW == replace(GEMV_MMA, nr=4) and GEMV_MMA_NARROW_MIN_K == 8192
    assert GEMV_MMA_TALL_LONG_MIN_K == 16384 and GEMV_MMA_TALL_LONG_ROWS == (9, 13, 14, 15, 16)


def gemv_mma_plain(config):
    """The mapping a shape takes without resident activations: GEMV_MMA for either resident one of 16-row tiles."""
    return GEMV_MMA if config in (RESIDENT_MMA, TWO_STREAMS) else config


def unkept(rows, n, k, config):
    """What backend(resident_activations=False) picks: GEMV_MMA for the resident 16-row mappings (or
    GEMV_MMA_NARROW where its rule takes it), and in place of two streams of 16-row tiles the tall tiles where
    they stream, GEMV_MMA for 1-2 waves of them."""
    waves = -(-n // 16) / (2 * SMS)  # of GEMV_MMA's tiles (blocks of one tile fit twice a multiprocessor)
    if config in (RESIDENT_MMA, TWO_STREAMS) and k >= GEMV_MMA_NARROW_MIN_K and waves <= GEMV_MMA_STREAM_WAVES:
        return GEMV_MMA_NARROW
    if config != TWO_16:
        return gemv_mma_plain(config)
    return GEMV_MMA_TALL if -(-n // 32) > GEMV_MMA_STREAM_WAVES * SMS else GEMV_MMA


def test_two_streams_at_16_rows_need_twice_the_tall_tiles_streams():
    """Where the GPU would hold fewer streams of 16-row tiles than twice the tall tiles' (here: no block of two
    streams a multiprocessor), fewer weight rows would be in flight: the tall tiles stream."""
    be = backend()
    be._gemv_function = lambda config, rows: be.kernels.setdefault(
        config, NoRoom() if config == TWO_16 else StandInKernel(fit=1))
    assert be._mma_config(16, 28672, 4096) == GEMV_MMA_TALL
    assert backend()._mma_config(16, 28672, 4096) == TWO_16


class NoRoom(StandInKernel):
    """A stand-in whose blocks fit no multiprocessor."""

    def __init__(self):
        super().__init__(fit=1)

    def resident_blocks(self, threads, shared):
        super().resident_blocks(threads, shared)
        return 0


def test_mma_config_never_asks_for_slots_past_what_a_block_may_have():
    """With blocks that fit once a multiprocessor anyway, only the opt-in limit stops the slots: 17 rounds of 8
    rows fit a block (220 KiB), 18 do not (229 KiB; the stand-in refuses an opt-in past 227 KiB)."""
    be = backend(fit=1)
    assert be._mma_config(8, 28672, 17 * 1024) == RESIDENT_MMA
    assert RESIDENT_MMA.shared_bytes(8, 18 * 1024) > BLOCK_SHARED
    assert be._mma_config(8, 28672, 18 * 1024) == GEMV_MMA


def test_mma_config_is_worked_out_once_per_shape():
    """An eager pass asks for every launch: the second time asks the kernels nothing; the switch is part of it."""
    be = backend()
    assert be._mma_config(8, 28672, 4096) == TWO_STREAMS
    calls = sum(len(kernel.calls) for kernel in be.kernels.values())
    assert be._mma_config(8, 28672, 4096) == TWO_STREAMS
    assert sum(len(kernel.calls) for kernel in be.kernels.values()) == calls
    be.resident_activations = False
    assert be._mma_config(8, 28672, 4096) == GEMV_MMA


def test_mma_grid_blocks():
    be = backend()
    rows, k, config = 8, 4096, GEMV_MMA
    one_tile, streamed = config.shared_bytes(rows, k, one_tile=True), config.shared_bytes(rows, k)
    both = StandInKernel(fit=2)  # the streaming size fits as often as a tile's: blocks may stream
    assert be._mma_grid(both, config, rows, k, 2 * SMS, None) == (2 * SMS, one_tile)  # one wave: a block a tile
    assert be._mma_grid(both, config, rows, k, 384, None) == (192, streamed)  # 1-2 waves: two tiles a block
    assert be._mma_grid(both, config, rows, k, 2 * SMS + 1, None) == (SMS + 1, streamed)
    assert be._mma_grid(both, config, rows, k, 4 * SMS, None) == (2 * SMS, streamed)  # 2 waves exactly
    assert be._mma_grid(both, config, rows, k, 4 * SMS + 1, None) == (2 * SMS, streamed)  # more: as many as fit
    assert be._mma_grid(both, config, rows, k, 5, 3) == (3, streamed)  # the tests' cap
    resident = RESIDENT_MMA.shared_bytes(rows, k)
    assert be._mma_grid(StandInKernel(fit=2), RESIDENT_MMA, rows, k, 4 * SMS + 1, None) == (2 * SMS, resident)
    two = TWO_STREAMS.shared_bytes(rows, k)  # blocks of two streams: half as many blocks for the same streams
    assert TWO_STREAMS.shared_bytes(rows, k, one_tile=True) == two
    assert be._mma_grid(StandInKernel(fit=1), TWO_STREAMS, rows, k, 4 * SMS + 1, None) == (SMS, two)
    # one to two waves: every slot, not half as many streams as tiles (96 blocks for 384 tiles)
    assert be._mma_grid(StandInKernel(fit=1), TWO_STREAMS, rows, k, 384, None) == (SMS, two)
    assert be._mma_grid(StandInKernel(fit=1), TWO_STREAMS, rows, k, 2 * SMS + 1, None) == (SMS, two)
    assert be._mma_grid(StandInKernel(fit=1), TWO_STREAMS, rows, k, 2 * SMS, None) == (SMS, two)  # a tile each
    assert be._mma_grid(StandInKernel(fit=1), TWO_STREAMS, rows, k, 5, 3) == (2, two)  # 3 streams: 2 blocks
    rows = 16  # GEMV_MMA at 16 rows: streaming would cost a block a multiprocessor: never
    one_tile = config.shared_bytes(rows, k, one_tile=True)
    assert be._mma_grid(StandInKernel(fit=2), config, rows, k, 10 * SMS, None) == (10 * SMS, one_tile)


def test_resident_shared_bytes():
    """The slots: a 128-byte line-aligned round of R activation rows (LPW blocks of quants and scales) for each
    of a tile's rounds, a warp each, beside stage buffers of weights only."""
    assert GEMV_MMA.shared_bytes(8, 4096) == 8 * 3 * 3328 + 16384
    assert RESIDENT_MMA.shared_bytes(8, 4096) == 8 * (3 * 2176 + 4 * 1152) + 16384
    assert RESIDENT_MMA.shared_bytes(8, 4160) == 8 * (3 * 2176 + 5 * 1152) + 16384  # a partial last round
    assert RESIDENT_TALL.shared_bytes(16, 3584) == 8 * (2 * 4352 + 4 * 2176) + 65536
    assert RESIDENT_TALL.shared_bytes(16, 3584, one_tile=True) == 8 * (2 * 4352 + 4 * 2176)
    # two streams: both groups' stage buffers (four rounds), the slots once, a tree's partial sums each
    assert TWO_STREAMS.shared_bytes(8, 4096) == 8 * (2 * 4 * 2176 + 4 * 1152) + 2 * 16384
    assert TWO_STREAMS.shared_bytes(8, 4096) + 1024 <= SM_SHARED  # one block a multiprocessor
    # and of 16-row tiles at 16 rows: two rounds each, the slots of 16 rows once, two trees of 16 rows
    assert TWO_16.shared_bytes(16, 4096) == 8 * (2 * 2 * 2176 + 4 * 2176) + 2 * 32768 == 204800
    assert TWO_16.shared_bytes(16, 5120) + 1024 <= SM_SHARED < TWO_16.shared_bytes(16, 6144) + 1024
    assert TWO_16.shared_bytes(12, 6144) == 8 * (2 * 2 * 2176 + 6 * 1664) + 2 * 32768  # 12 rows: 13 lines a round


@pytest.mark.parametrize("rows", range(1, 17))
@pytest.mark.parametrize("heads, kv_heads", [(32, 8), (40, 8), (24, 4), (64, 8), (28, 4)])
def test_attention_heads_takes_the_fewest_heads_a_block_that_fit(rows, heads, kv_heads):
    """Up to 512 positions, with more (row, head) pairs than multiprocessors: attention_heads with 2, 3 or 4 query
    heads a block, the fewest whose blocks fit the multiprocessors once; a group of 5 heads then runs blocks of 3 and 2
    where 2 a block would not fit, never 4 and 1 where 3 a block fits. A group of 4 never takes 3. Where none fits
    once: a block per (row, head) while those fit twice, else again the fewest heads a block that fit twice (qwen2.5-32b
    at 9-16 rows), else spread."""
    be = backend()
    group, pairs = heads // kv_heads, rows * heads
    plan = be.attention_plan(rows, heads, kv_heads, 512)
    fitting = [per for per in (2, 3, 4) if rows * kv_heads * -(-group // per) <= SMS]
    fitting_twice = [per for per in (2, 3, 4) if rows * kv_heads * -(-group // per) <= 2 * SMS]
    if pairs <= SMS:
        assert plan.kernel == "attention"
    elif fitting:
        assert (plan.kernel, plan.per) == ("attention_heads", fitting[0])
    elif pairs < 2 * SMS:
        assert plan.kernel == "attention"
    elif fitting_twice:
        assert (plan.kernel, plan.per) == ("attention_heads", fitting_twice[0])
        assert be.attention_threads(attention_units(rows, heads, kv_heads, plan.per)) == 256  # two a multiprocessor
    else:
        assert plan.kernel == "spread"
    if plan.kernel == "attention_heads":
        assert plan.per != 3 or -(-group // 3) < -(-group // 2)  # 3 only where it makes fewer blocks than 2
    if group == 4:
        assert plan.per != 3
    if group == 5 and rows * kv_heads * 3 > SMS >= rows * kv_heads * 2 and pairs > SMS:
        assert plan.per == 3


def test_qwen2_5_32b_attention_at_9_to_16_rows_runs_blocks_of_heads_two_a_multiprocessor():
    """40 query heads of 8 kv heads: no block of heads fits the multiprocessors once from 9 rows; two of 2 heads
    fit up to 11 rows (264 blocks), two of 3 up to 16, rather than spreading over positions (which a longer
    cache still does)."""
    be = backend()
    two, three = AttnPlan("attention_heads", 2), AttnPlan("attention_heads", 3)
    assert [be.attention_plan(rows, 40, 8, 512) for rows in range(9, 17)] == [two] * 3 + [three] * 5
    assert be.attention_plan(16, 40, 8, 513) == AttnPlan("spread", 4)
    assert be.attention_plan(17, 40, 8, 512) == AttnPlan("spread", 4)  # 272 blocks of 3 or 4 heads


@pytest.mark.parametrize("sms", [SMS, 60])  # the H200's multiprocessors, and an MI50's compute units
def test_attention_slice_reaches_three_halves_of_the_multiprocessors(sms):
    """attention_scores' slice: the longest of 256, 128, 64 positions whose units x slices reach 3/2 of the
    multiprocessors, else 64; on an H200, llama-8b's one row (8 units) over 1101 / 4101 positions 64 / 128, and 8
    rows (64 units) 256. (tests/test_gpu_kernels.py asks the same of the device's own count.)"""
    be = backend()
    be._multiprocessors = sms
    least = -(-3 * sms // 2)
    assert [be.attention_slice(units, cache_len) for units, cache_len in (
        (1, 256 * least), (1, 256 * (least - 1)), (1, 128 * least), (1, 128 * (least - 1)), (least, 1),
        (least - 1, 1))] == [256, 128, 128, 64, 256, 64]
    if sms == SMS:
        assert [be.attention_slice(*case) for case in ((8, 1101), (8, 4101), (64, 1101))] == [64, 128, 256]


def test_attention_values_takes_units_of_rows_only_beyond_one_wave():
    """attention_values' rows a unit: one while the one-row units' blocks fit the multiprocessors once, else
    ATTN_VALUES_ROWS (never more than the launch's rows); on an H200, llama-8b's 2 rows over 1984 positions (16
    units x 8 chunks = 128 blocks) one, 4 rows (256 blocks) two."""
    be = backend()
    assert ATTN_VALUES_ROWS == 2
    assert [be.attention_values_rows(rows, blocks) for rows, blocks in (
        (16, SMS), (16, SMS + 1), (1, 1000), (2, 10 * SMS), (3, SMS + 1))] == [1, 2, 1, 2, 2]
    chunks = -(-1984 // 256)
    assert [be.attention_values_rows(rows, attention_units(rows, 32, 8, 4) * chunks) for rows in (1, 2, 4, 8, 16)] == [
        1, 1, 2, 2, 2]


def test_attention_values_threads_in_units_of_rows():
    """attention_values' threads a block in units of rows: 512 or 256 where that runs the launch in one wave; past
    that 128 only where its last wave (four blocks a multiprocessor) is at least 7/8 full, else 512 where that takes
    at most three waves, else 256. On an H200, llama-8b over caches of 9 / 12 / 8 / 16 chunks (2100 / 3000 / 2048 / 4096 positions)
    at 8 rows (32 units of two rows) and at 16 (64 units): 288 / 384 / 256 / 512 blocks and 576 / 768 / 512 / 1024."""
    be = backend()
    cases = {1: 512, SMS: 512, SMS + 1: 256, 2 * SMS: 256, 2 * SMS + 1: 512, 3 * SMS: 512, 3 * SMS + 1: 256,
             461: 256, 462: 128, 4 * SMS: 128, 4 * SMS + 1: 256, 4 * SMS + 461: 256, 4 * SMS + 462: 128,
             8 * SMS: 128, 8 * SMS + 1: 256, 100 * 4 * SMS: 128}
    assert {blocks: be.attention_values_threads(blocks) for blocks in cases} == cases
    units_of_two = {rows: attention_units(rows // 2, 32, 8, 4) for rows in (8, 16)}
    assert [be.attention_values_threads(units_of_two[8] * chunks) for chunks in (9, 12, 8, 16)] == [512, 512, 256, 128]
    assert [be.attention_values_threads(units_of_two[16] * chunks) for chunks in (9, 12, 8, 16)] == [256, 256, 128, 128]


def test_attention_values_splits_the_columns_of_a_launch_of_few_blocks():
    """attention_values' blocks a (unit, chunk): the most of 1, 2, 4, 8 whose blocks fit the multiprocessors once;
    on an H200, llama-8b's one row over 1984 positions (8 units x 8 chunks) two, over 960 (8 x 4) four, and 2 rows
    over 1984 (128 (unit, chunk) pairs) one."""
    be = backend()
    assert [be.attention_values_col_parts(blocks) for blocks in (1, 16, 17, 33, 34, 66, 67, SMS, SMS + 1)] == [
        8, 8, 4, 4, 2, 2, 1, 1, 1]
    assert [be.attention_values_col_parts(8 * chunks) for chunks in (8, 4)] == [2, 4]
    assert be.attention_values_col_parts(16 * 8) == 1


def test_silu_grid_takes_a_row_in_parts_and_refuses_rows_past_the_grid():
    """silu_mul_q8's grid: a block of up to SILU_Q8_THREADS threads (32 a Q8_0 block) for each part of each row;
    rows whose parts would pass the grid's y limit get a DeviceError (one line from the CLI), not a failed launch."""
    from refspec.errors import DeviceError
    from refspec.gpu import GRID_Y_MAX, SILU_Q8_THREADS, silu_mul_q8_grid

    groups = SILU_Q8_THREADS // 32
    assert silu_mul_q8_grid(8, 14336) == ((8, -(-448 // groups)), SILU_Q8_THREADS)
    assert silu_mul_q8_grid(1, 96) == ((1, 1), 96)  # fewer blocks than a block's groups: one group each
    assert silu_mul_q8_grid(3, GRID_Y_MAX * SILU_Q8_THREADS) == ((3, GRID_Y_MAX), SILU_Q8_THREADS)
    with pytest.raises(DeviceError, match="silu_mul_q8"):
        silu_mul_q8_grid(3, GRID_Y_MAX * SILU_Q8_THREADS + 32)
