"""Which mapping of a kernel runs where on the GPU, and the measurements behind each choice: the GEMV's
configurations (GemvConfig) and the tables of them by row count (GEMV_CONFIGS and the tensor-core GEMV's), and
attention's plans (AttnPlan) with the constants its kernels share with their wrapper. Every mapping gives the
same bits (tests/test_gpu_kernels.py); these choose among them for speed only. refspec/gpu.py's GpuBackend applies
them; its rules that need the GPU itself (multiprocessors, occupancy: _mma_config, attention_plan) live there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from refspec.model import QK8_0

GEMV_THREADS = {"q8_gemv": 128, "q8_gemv_staged": 256}  # RS_GEMV_THREADS, RS_GEMV_STAGED_THREADS
GEMV_MMA_ROWS = 16  # weight rows per thread block of q8_gemv_mma (RS_MMA_ROWS); its NR is warps per block


@dataclass(frozen=True)
class AttnPlan:
    """How attention runs (kernels_raw/attention.hip; every plan gives the same bits): `kernel` "attention" (one
    kernel, a block per (row, query head)), "attention_heads" (one kernel, a block per (row, kv head) taking
    `per` of its query heads) or "spread" (attention_scores then attention_values, spread over positions, each
    block taking `per` query heads of one kv head)."""

    kernel: str
    per: int = 1


@dataclass(frozen=True)
class GemvConfig:
    """One way to run kernels_raw/q8_gemv.hip over R rows (its header explains the mapping), all giving the
    same bits: the kernel, NR weight rows per group of 32 lanes, SPLIT groups sharing them (each with
    ceil(R / SPLIT) activation rows), OCC thread blocks per multiprocessor asked of the CUDA compiler, and
    for q8_gemv DEPTH rounds of weight blocks each lane has in flight.
    For q8_gemv_mma the three numbers are NR warps per thread block, SPLIT tiles of 16 weight rows per thread
    block (MT) and OCC rounds of weights in flight per warp (STAGES), `resident` keeps the activations of a tile
    in shared memory for every tile (RES), and `groups` (1 or 2) is the streams of tiles a block runs, GROUPS
    groups of NR warps sharing those activations."""

    kernel: str
    nr: int
    split: int = 1
    occ: int = 1
    depth: int = 1  # q8_gemv: rounds of weight blocks a lane has in flight
    resident: bool = False  # q8_gemv_mma: the activations copied once a block, not once a tile
    groups: int = 1  # q8_gemv_mma: streams of tiles a block runs
    even: bool = False  # q8_gemv: at most ceil(blocks / multiprocessors) blocks a multiprocessor (GEMV_EVEN_MIN_K)

    def name(self, rows: int) -> str:
        """The template instance for `rows` rows."""
        rp = rows if self.kernel == "q8_gemv_mma" else -(-rows // self.split)
        more = f", {self.depth}" if self.depth != 1 else ", true" if self.resident else ""
        if self.groups != 1:
            more = f", {str(self.resident).lower()}, {self.groups}"
        return f"{self.kernel}<{rp}, {self.nr}, {self.split}, {self.occ}{more}>"

    def threads(self) -> int:
        return 32 * self.nr * self.groups if self.kernel == "q8_gemv_mma" else GEMV_THREADS[self.kernel]

    def weight_rows_per_block(self) -> int:
        if self.kernel == "q8_gemv_mma":
            return GEMV_MMA_ROWS * self.split
        return self.nr * GEMV_THREADS[self.kernel] // 32 // self.split

    def takes(self, k: int) -> bool:
        """Whether this configuration runs rows of length k (a multiple of 32): q8_gemv_mma needs K/32 even,
        as it copies the scales of two blocks at once."""
        return self.kernel != "q8_gemv_mma" or k % (2 * QK8_0) == 0

    def shared_bytes(self, rows: int, k: int, one_tile: bool = False) -> int:
        """Dynamic shared memory of one thread block over rows of length k (kernels_raw/q8_gemv.hip's
        RsMmaShared: the warps' stage buffers, and with `resident` their activation slots, a round of a tile
        each; then the partial sums of a tile's tree; with one_tile, for blocks of one tile each, the larger of
        the two, for a block of one group); the other kernels use none."""
        if self.kernel != "q8_gemv_mma":
            return 0
        lanes_per_warp, tile_rows = 32 // self.nr, GEMV_MMA_ROWS * self.split
        row_bytes = lanes_per_warp * QK8_0 + lanes_per_warp * 2  # a row's quants and scales, weights or activations

        def lines(nbytes: int) -> int:  # buffers start on 128-byte lines
            return -(-nbytes // 128) * 128

        if self.resident:
            rounds = -(-k // (QK8_0 * 32))
            pipe = self.nr * (self.groups * self.occ * lines(tile_rows * row_bytes) + rounds * lines(rows * row_bytes))
        else:
            pipe = self.groups * self.nr * self.occ * lines((tile_rows + rows) * row_bytes)
        partial = 32 * tile_rows * 8 * -(-rows // 8) * 4
        return max(pipe, partial) if one_tile and self.groups == 1 else pipe + self.groups * partial


# The GEMV runs at most GEMV_MAX_ROWS activation rows per launch; more rows are split into launches of that
# many (each output is the same sequence of operations either way). GEMV_CONFIGS[R] is the configuration for
# R rows: for each R timed, the variant of `refspec bench gemv --variants` whose worst time over the four
# benchmark shapes, relative to the best variant on that shape, was lowest (H100, 2026-11-25; between timed
# R, the next larger R's choice). tests/results/bench_gemv_h100.json has the numbers. 9-12 rows: q8_gemv with 4
# rows a warp, not q8_gemv_staged as on the H100: on the H200 it is the faster on each of six shapes from 576x576
# to 4096x4096, by 18-42 % (tests/results/gemv_crossover_h200.json, 2026-12-02; on NVIDIA these rows of
# matrices of GEMV_MMA_MIN_WEIGHTS and more run on the tensor cores).
GEMV_MAX_ROWS = 16
GEMV_CONFIGS = {r: GemvConfig("q8_gemv", 2) for r in (1, 2)}
GEMV_CONFIGS.update({r: GemvConfig("q8_gemv", 4, split=2) for r in (3, 4)})
GEMV_CONFIGS.update({r: GemvConfig("q8_gemv", 4) for r in range(5, 13)})
GEMV_CONFIGS.update({r: GemvConfig("q8_gemv", 4, split=2, occ=2) for r in range(13, GEMV_MAX_ROWS + 1)})
# 5-8 rows of a matrix with rows of more than 32 blocks (two rounds of a group's lanes, or more) that would give
# fewer thread blocks than the GPU has multiprocessors under GEMV_CONFIGS[rows] (16 weight rows a block): two
# weight rows and two activation rows a group, the four groups of a block sharing the weight rows, so 2 weight
# rows a block. The default model's down projection (576 x 1536): 36 blocks -> 288, and a pass of 8 rows
# 0.020 ms faster at 8 live rows, 0.025 at 2, 0.003 slower at one (H200, 2026-12-02, tests/profile_configs.py on
# a SmolLM2-shaped synthetic model: tests/results/profile_configs_smol_shape_h200.json). Its matrices of 576
# columns (one round of the lanes) gain nothing so, nor from any other mapping tried there.
GEMV_FEW_BLOCKS = {r: GemvConfig("q8_gemv", 2, split=4) for r in range(5, 9)}
GEMV_FEW_BLOCKS_MIN_K = 33 * QK8_0
# One-row GEMVs over short rows (3 to 5 rounds of a group's 32 lanes, K of 3072 to 5120), on CUDA: a lane's
# weight loads go out at most one round ahead of its adds, so a row of 4-5 rounds waits for the memory 2-3 times
# in turn. With 3 rounds in flight (GEMV_SHORT_ROWS[3], 88 registers against 76: 5 blocks a multiprocessor
# instead of 6) where the whole grid still fits the GPU at once, or with 2 (69 registers: 7 blocks) where the
# usual mapping's grid does not fit and this one's does. Measured at R = 1 (H200, 2026-12-02, `refspec bench
# gemv --variants`; tests/results/gemv_depth_small_h200.json, us): 4096 x 4096 (512 blocks) 5.66 -> 5.08,
# 5120 x 5120 (640) 7.93 -> 7.51, 7168 x 5120 (896) 12.40 -> 10.61; left as they were, as neither applies:
# 6144 x 4096 (768 blocks; 2 rounds took 7.50 against 7.03), 14336 x 4096 and larger (gemv_depth_h200.json).
# Long rows gained nothing so. Greedy decoding with and without (`bench decode --no-short-rows`), in turn, in
# one device call (short_rows_*_h200.json): qwen2.5-32b (its Q/K/V and output projections) 106.0 -> 107.25
# tokens/s, llama-8b (its output projection) 406.9 -> 407.6-408.0.
# One- and two-row GEMVs over long rows whose grid is one wave of more blocks than multiprocessors (llama-8b's
# down projection, 4096 x 14336: 512 blocks of 4 warps), on CUDA: the hardware does not spread such a grid evenly.
# A kernel launched while the one before it still runs (GpuBackend.overlap) finds some multiprocessors full and
# others free, and the free ones take up to 6 blocks where an even share is 4. Each warp reads its rows in turn,
# so those multiprocessors finish last. Warps' ends stamped by %globaltimer (tests/probe_gemv_tail.py, H200,
# 2026-12-04, tests/results/gemv_tail_cap_2026_12_04_h200.json), 4096 x 14336: a multiprocessor's last end
# after the first warp's start, by the warps it ran, 4 warps 13.3 us, 16 14.7, 24 15.4 (read ceiling 13.8).
# With dynamic shared memory that the kernel never touches holding each multiprocessor to ceil(blocks /
# multiprocessors) blocks (GemvConfig.even), us per GEMV (graph replays): 4096 x 14336 18.15 -> 16.77, 5120 x
# 27648 39.96 -> 38.41; 4096 x 4096 5.22 -> 5.33 (short rows: not taken there). The llama-8b pass in turn
# (tests/profile_even_blocks.py; even_blocks_pass_rows12_llama8b_2026_12_04_h200.json), 1 / 2 rows 2.427 /
# 2.630-2.631 -> 2.415-2.417 / 2.610-2.611 ms. Tried on q8_gemv_mma's grids of one tile a block in one wave
# (3-16 rows), not kept: the pass of 4 / 8 rows the same, of 16 rows +0.003 to +0.007 ms
# (even_blocks_mma_pass_llama8b_2026_12_04_h200.json).
GEMV_EVEN_MIN_K = 8192
GEMV_SHORT_ROWS = {3: GemvConfig("q8_gemv", 2, depth=3), 2: GemvConfig("q8_gemv", 2, depth=2)}
GEMV_SHORT_ROWS_K = (3 * 32 * QK8_0, 5 * 32 * QK8_0)  # (fewer rounds than 3 have too few loads to overlap)
# The tensor-core GEMV (integer mma, NVIDIA sm_80+; same bits) for GEMVs of at least GEMV_MMA_MIN_ROWS rows
# whose K is a multiple of 64 (GpuBackend(mma_min_rows=None) never uses it). tests/results/bench_gemv_h200.json
# has the numbers. Matrices of more tiles than GEMV_MMA_STREAM_WAVES waves of thread blocks get blocks that
# stream many tiles each (GpuBackend._mma_grid).
# 9-16 rows take tiles of 32 weight rows (GEMV_MMA_TALL) where its tiles fit the GPU at once or stream, as the
# activations' copies, which every tile makes, then serve twice the weights (the L2 cache served 76-93 % of its peak
# at 8-16 rows of 152064 x 3584 under ncu). It holds one block a multiprocessor (236 registers), so a matrix of
# one to GEMV_MMA_STREAM_WAVES waves of its tiles takes GEMV_MMA's 16-row tiles, two blocks a multiprocessor.
# H200, 2026-12-02, us at 16 rows (tests/results/gemv_tall_tiles_h200.json): 152064x3584 199.2 -> 178.8,
# 28672x4096 45.5 -> 42.9, 14336x4096 26.1 -> 24.3, 4096x14336 20.9 -> 19.4, 4096x4096 7.64 -> 7.54, and
# 6144x4096 (192 tall tiles) 13.68 -> 12.43 on GEMV_MMA (14.12 on GEMV_MMA_TALL), against (8, 1, 2)'s, which
# they took before. Tall tiles need the kernel's branch-free rounds and swizzled tree: without them the llama-8b
# pass of 12 / 16 rows took 4.09 / 4.16 ms against 3.64 / 3.68 with them (3.78 / 3.85 on (8, 1, 2)).
GEMV_MMA = GemvConfig("q8_gemv_mma", 8, 1, 3)
GEMV_MMA_TALL = GemvConfig("q8_gemv_mma", 8, 2, 2)
# GEMV_MMA's blocks that stream two tiles or more keep each warp's activations of a tile in shared memory for
# their later tiles (GemvConfig.resident), where those slots cost no block a multiprocessor: the activations'
# copies then go through the L2 cache once a block instead of once a tile. A small gain at 8 rows, H200,
# 2026-12-02, us (tests/results/gemv_resident_h200.json): 6144x4096 9.51 -> 9.20, 14336x4096 19.47 -> 19.21,
# 152064x3584 145.97 -> 144.53, 128256x4096 139.69 -> 138.59, 28672x4096 35.26 -> 35.10; the llama-8b pass of 8 rows
# 3.155 / 3.158 -> 3.136 / 3.127 ms in turn. Not for the tall tiles: at 16 rows 152064x3584 took 178.1 -> 186.3,
# 128256x4096 173.0 -> 174.1.
GEMV_MMA_RESIDENT = GemvConfig("q8_gemv_mma", 8, 1, 3, resident=True)
# Where GEMV_MMA_RESIDENT runs two blocks a multiprocessor, each holding the same activations, one block of two
# streams (GemvConfig.groups) holds them once, and so has room for a fourth round of weights in flight a warp
# (ncu had GEMV_MMA_RESIDENT's warps waiting for their copies a third of the time, DRAM at 74 %). Up to 8 rows
# (its slots at 16 rows leave room for one round). H200, 2026-12-03 (tests/results/gemv_two_streams_h200.json),
# us at 8 rows: 14336x4096 19.46 -> 18.66, 6144x4096 9.26 -> 9.40, 128256x4096 139.37 -> 138.88, 28672x4096
# 34.74 -> 34.89; the llama-8b pass (graph replay, trees in turn, twice) of 4 rows 2.795 / 2.796 -> 2.766 /
# 2.767 ms, of 8 rows 2.904 / 2.900 -> 2.862 / 2.862.
GEMV_MMA_TWO_STREAMS = GemvConfig("q8_gemv_mma", 8, 1, 4, resident=True, groups=2)
# 9-16 rows of a matrix of more tall tiles than the GPU holds at once: blocks of two streams of GEMV_MMA's 16-row
# tiles sharing their resident activations, two rounds of weights in flight a warp, in place of GEMV_MMA_TALL
# where the tall tiles stream and of GEMV_MMA for one to two waves of them (the same weight rows in flight a
# multiprocessor as the tall tiles; 128 registers against 234, and the activations copied once a block instead
# of once a tile). Its slots fit beside the stage buffers up to
# rows of 5 rounds of the lanes at 16 rows (K <= 5120), 6 at 12. H200, 2026-12-03, us at 16 rows (`refspec bench
# gemv --mma`, tests/results/gemv_two_streams_16_h200.json): 28672x4096 41.66 -> 39.15, 128256x4096 167.63 ->
# 150.72, 152064x3584 175.02 -> 161.01, 14336x4096 23.91 -> 23.26; the llama-8b pass (graph replay, in turn) of
# 12 rows 3.413-3.439 -> 3.315-3.344 ms, of 16 rows 3.495-3.512 -> 3.379-3.403; qwen2.5-32b's of 12 / 16 rows
# 12.89-12.93 / 14.00-14.01 -> 12.50-12.52 / 13.57-13.58. For 1-2 waves of tall tiles, us at 12 / 16 rows against
# GEMV_MMA: 7168x5120 15.92 / 16.56 -> 14.51 / 14.74, 6144x4096 11.98 / 12.74 -> 12.01 / 12.15; the passes of 12 /
# 16 rows: qwen2.5-32b -0.02 / -0.06 to -0.07 ms, llama-8b +0.005 to +0.019 / -0.002 to -0.014. The rule before
# it -> this one, 12 / 16 rows (23:14-23:19 UTC, `pass_ab_final`): llama-8b 3.42 / 3.51 -> 3.35 / 3.38-3.39 ms,
# qwen2.5-32b 13.03 / 14.07-14.09 -> 12.63-12.64 / 13.61-13.62.
GEMV_MMA_TWO_STREAMS_16 = GemvConfig("q8_gemv_mma", 8, 1, 2, resident=True, groups=2)
GEMV_MMA_STREAM_WAVES = 2
# ... except for rows of GEMV_MMA_TALL_LONG_MIN_K or more at GEMV_MMA_TALL_LONG_ROWS rows, where the tall tiles
# stay: GEMV_MMA's tiles of 8 activation rows pay most there. H200, 2026-12-04, `refspec bench gemv --mma` (one
# launch alone, tests/results/gemv_tall_long_rows_h200.json), us GEMV_MMA / GEMV_MMA_TALL at 9 / 10 / 11 / 12 / 13 /
# 14 / 15 / 16 rows: 5120 x 27648 (qwen2.5-32b's down projection, 160 tall tiles) 59.5 / 51.3 / 51.1 / 50.5 / 60.1 /
# 68.3 / 60.7 / 64.0 against 54.9 / 54.6 / 54.8 / 53.9 / 55.3 / 55.5 / 55.5 / 54.1; 5120 x 17408 (qwen3.5-27b's) 38.5 /
# 33.4 / 33.2 / 32.6 / 38.1 / 39.6 / 38.2 / 37.5 against 36.0 / 36.1 / 36.2 / 35.5 / 36.6 / 36.8 / 36.8 / 35.6. The
# qwen2.5-32b pass (graph replay, in turn, twice; tests/results/gemv_tall_long_rows_h200.json) with the tall tiles
# at 9-16 rows: 12 rows 11.80-11.81 -> 12.06 ms, 16 rows 12.81 -> 12.23-12.24 (8.87 one row).
GEMV_MMA_TALL_LONG_MIN_K = 16384
GEMV_MMA_TALL_LONG_ROWS = (9, 13, 14, 15, 16)
# 3-8 rows of long rows (K >= GEMV_MMA_NARROW_MIN_K) of a matrix of at most GEMV_MMA_STREAM_WAVES waves of
# GEMV_MMA's tiles, where GEMV_MMA would run without resident activations (they do not fit, or there is no
# later tile to keep them for): blocks of 4 warps, each warp the spec's lanes 8w .. 8w+7 (rows of 256 bytes a
# round), three rounds in flight; the same shared memory a block. The down projections, pass of 3 / 4 / 6 / 8
# rows, graph replay, in turn, twice (H200, 2026-12-03 23:37-23:41 UTC, tests/profile_pass_swaps.py,
# tests/results/gemv_mma_narrow_h200.json): llama-8b (4096 x 14336, 256 tiles) 2.690 / 2.722 / 2.804 / 2.829 ms
# -> 2.684 / 2.702 / 2.784 / 2.825, again 2.682 / 2.717 / 2.798 / 2.823 -> 2.676 / 2.695 / 2.779 / 2.818;
# qwen2.5-32b (5120 x 27648, 320 tiles) at 4 / 8 rows 9.943 / 10.589 -> 9.875 / 10.369, again 9.942 / 10.576 ->
# 9.880 / 10.364. (Not measured on matrices that stream more tiles a block: there GEMV_MMA stays.)
GEMV_MMA_NARROW = GemvConfig("q8_gemv_mma", 4, 1, 3)
GEMV_MMA_NARROW_MIN_K = 8192
GEMV_MMA_MIN_ROWS = 3  # (2 rows: the dp4a GEMV is as fast in a pass; from 3 the tensor cores are faster)
# In turn in one call, the llama-8b pass of 3 / 4 / 5 / 6 / 7 rows took 2.82 / 2.86 / 2.94 / 2.97 / 2.99 ms with
# the tensor-core GEMV from 2 rows, 2.97-3.02 / 3.10-3.15 / 3.28-3.32 / 3.66-3.70 / 4.03-4.08 with it from 8 rows,
# as before (H200, 2026-12-02 19:22-19:25 UTC, tests/results/mma_min_rows_llama8b_h200.json); 2 rows 2.73 against
# 2.72-2.76.
# ... and of at least this many weights: on smaller matrices the dp4a GEMV is the faster at 8-16 rows on the
# H200 (576x576 to 1536x1536: 1.35-2.59 us against 1.64-2.69 at 8 rows, 1.47-3.08 against 2.09-3.33 at 16), the
# tensor-core one from 2048x2048 on (3.01 against 3.31 us at 8 rows, 3.74 against 4.00 at 16; the 8B shapes by
# more): tests/results/gemv_crossover_h200.json.
GEMV_MMA_MIN_WEIGHTS = 4 * 1024 * 1024
# The tensor-core mappings `refspec bench gemv --mma` and --variants time beside the production GEMV.
GEMV_MMA_VARIANTS = [GemvConfig("q8_gemv_mma", nr, mt, stages)
                     for nr, mt, stages in ((8, 1, 3), (8, 1, 2), (8, 1, 4), (4, 1, 3), (8, 2, 2), (16, 1, 3))]
GEMV_MMA_VARIANTS += [GEMV_MMA_RESIDENT, replace(GEMV_MMA_TALL, resident=True), GEMV_MMA_TWO_STREAMS,
                      GEMV_MMA_TWO_STREAMS_16]


def gemv_mma(rows: int) -> GemvConfig:
    """The tensor-core GEMV's configuration for `rows` rows of a matrix that fits the GPU at once or streams
    (GpuBackend.gemv_config: between the two, 9-16 rows take GEMV_MMA)."""
    return GEMV_MMA if rows <= 8 else GEMV_MMA_TALL


def two_streams(rows: int) -> GemvConfig:
    """The tensor-core GEMV's blocks of two streams for `rows` rows (GpuBackend._mma_config says where)."""
    return GEMV_MMA_TWO_STREAMS if rows <= 8 else GEMV_MMA_TWO_STREAMS_16


def production_gemv_names(cuda: bool, mma_min_rows: int | None) -> list[str]:
    """The GEMV instances a backend launches, compiled as one module: GEMV_CONFIGS and GEMV_FEW_BLOCKS
    everywhere; on CUDA also GEMV_SHORT_ROWS and, from mma_min_rows rows (None: never), the tensor-core GEMV."""
    names = [c.name(r) for table in (GEMV_CONFIGS, GEMV_FEW_BLOCKS) for r, c in table.items()]
    if cuda:
        names += [c.name(1) for c in GEMV_SHORT_ROWS.values()]
        if mma_min_rows is not None:
            names += [c.name(r) for r in range(mma_min_rows, GEMV_MAX_ROWS + 1)
                      for c in dict.fromkeys((gemv_mma(r), GEMV_MMA, GEMV_MMA_RESIDENT))]
            names += [two_streams(r).name(r) for r in range(mma_min_rows, GEMV_MAX_ROWS + 1)]
            names += [GEMV_MMA_NARROW.name(r) for r in range(mma_min_rows, 9)]
    return names


ATTN_MAX_DIM = 512  # RS_ATTN_MAX_DIM in attention.hip
# Threads per block of attention<MAXD, THREADS>: 512 while each (row, head) block can have a multiprocessor of
# its own, else 256 or 128 (2 or 4 blocks share one: RS_ATTN_MAX_THREADS / THREADS in its launch bounds).
ATTN_THREAD_CHOICES = (512, 256, 128)
# Positions per slice of attention_scores (its slice_len), tried largest first: GpuBackend.attention_slice takes the
# first whose units x slices reach 3/2 of the multiprocessors' count, else the last. A slice pays its end (the max
# across the block's groups, two barriers: ~155 of ~710 sm_90 instructions a 64-position slice at heads of 128) once
# for its slice_len / 64 rounds of the key loop; a shorter slice gives a short cache more blocks. H200, 2026-12-04,
# llama-8b's shape, a chain of 32, us a launch at slices of 64 / 128 / 256 in turn, twice
# (tests/results/attention_slice_h200.txt): one row over 1000 positions 14.8 / 15.1 / 16.6, over 4000 19.7 / 18.7 /
# 20.6; 8 rows 31.1 / 28.2 / 27.4 and 102.0 / 97.0 / 94.1; 16 rows 55.9 / 53.0 / 50.7 and 185.4 / 178.0 / 174.3.
ATTN_SLICES = (256, 128, 64)
ATTN_SCORE_THREADS = 256  # RS_ATTN_SCORE_THREADS: threads per block of attention_scores
ATTN_VALUES_MAX_THREADS_HIP = 256  # attention_values<512> needs more registers than gfx906 gives 512 threads
ATTN_HEADS = 4  # RS_ATTN_HEADS: query heads of one kv head per block of attention_scores and attention_values
# Rows a unit of attention_values and attention_scores takes (their RG) where one-row units would take more than one
# wave (GpuBackend.attention_values_rows): each value a block loads serves the query heads of that many consecutive
# rows, so a long cache's values pass through L1 half as often (ncu had its L1/TEX pipe 72 % busy at 16 rows over 1984
# positions); such a launch runs unpaired, its threads by GpuBackend.attention_values_threads. H200, 2026-12-04,
# the llama-8b pass (graph replay, in turn, twice; tests/results/attention_values_rows_2026_12_04_h200.json), ms at 1 /
# 2 / 4 / 8 / 16 rows, one row a unit -> 2 -> 3: position 1984 2.762 / 2.992 / 3.640 / 4.096 / 5.848 -> 2.766 / 3.003 /
# 3.433 / 4.048 / 5.670 -> 2.772 / 3.007 / 3.559 / 4.400 / 6.418; position 960 at 8 / 16 rows 3.592 / 4.440 -> 3.371 /
# 4.356 -> 3.534 / 4.755 (3 rows: 128 registers and one position a lane in flight, else spills; 4: more shared memory
# than a block may have). attention_scores takes the same units (each key loaded once for both rows' queries, 4 keys a
# group in flight instead of 8): in turn, twice, same bits, the pass at 1984 positions 4 / 8 / 16 rows 3.409-3.414 /
# 4.070-4.075 / 5.661-5.674 -> 3.389-3.396 / 3.978-3.984 / 5.601-5.603 ms, at 960 16 rows 4.340-4.343 -> 4.264-4.265
# (tests/results/attention_scores_rows_2026_12_04_h200.json).
ATTN_VALUES_ROWS = 2
# Blocks a (unit, chunk) of attention_values may take, each a part of the columns
# (GpuBackend.attention_values_col_parts: the most whose blocks fit the multiprocessors once), so that a launch of few
# units and chunks (one row over a cache of 2048 positions: 8 units x 8 chunks on 132 multiprocessors) fills the GPU.
# H200, 2026-12-04, the llama-8b pass (graph replay, in turn, twice;
# tests/results/attention_values_col_parts_2026_12_04_h200.json), ms, one part -> these: one row at 1984 positions
# 2.745-2.749 -> 2.664-2.665 (two parts), at 960 2.665-2.668 -> 2.541-2.543 (four); two rows at 960 2.877-2.878 ->
# 2.803-2.806 (two); launches of a wave or more unchanged.
ATTN_VALUES_COL_PARTS = (1, 2, 4, 8)
# The query heads a block of attention_heads takes, tried in this order (the first whose blocks fit the multiprocessors
# one each). 3 splits a group of 5 (qwen2.5-32b) into blocks of 3 and 2 heads where 2 a block would not fit, instead
# of 4 and 1 (the block of 4 sets the time); a group of 4 never takes it (3 fits only where 2 fits). qwen2.5-32b's
# pass of 8 rows took 10.81 -> 10.77 ms at position 64 and 11.90 -> 11.69 at 300 (H200, 2026-12-03, in turn;
# tests/results/attention_three_heads_qwen32b_h200.json).
ATTN_HEADS_PER = (2, 3, ATTN_HEADS)
ATTN_SPLIT_CACHE = 512  # caches longer than this run attention spread over positions (GpuBackend.attention_plan)
SM_THREADS = 2048  # threads one multiprocessor holds (NVIDIA sm_80+): attention_scores fills them
ATTN_BOUNDS = (64, 128, 256, ATTN_MAX_DIM)  # the instances of attention<MAXD>: the smallest MAXD >= dim runs


def attention_units(rows: int, heads: int, kv_heads: int, per: int) -> int:
    """The units of attention_heads and the spread plan, a block's work each: (row, kv head, part), part p
    taking query heads per*p .. per*p+per-1 of the kv head's group of heads / kv_heads."""
    return rows * kv_heads * -(-(heads // kv_heads) // per)


def attention_heads_max_threads(bound: int, hip: bool) -> int:
    """The most threads a block of attention_heads<bound, THREADS, per> takes: 512 for heads up to 128 wide on NVIDIA;
    else 256 (four heads' queries and keys in registers spill at 512 threads, which leave 128 registers a thread;
    gfx906 as for attention_values)."""
    return ATTN_THREAD_CHOICES[0] if bound <= 128 and not hip else ATTN_VALUES_MAX_THREADS_HIP


def gemv_variants(rows: int) -> list[GemvConfig]:
    """The GEMV configurations for `rows` rows that `refspec bench gemv --variants` times (registers hold
    NR * ceil(rows / SPLIT) sums and DEPTH + 1 sets of NR weight blocks per thread, so both are capped)."""
    out = list(GEMV_MMA_VARIANTS)  # tensor cores: CUDA sm_80+ only
    for kernel in ("q8_gemv", "q8_gemv_staged"):
        for split in (1, 2, 4):
            rp = -(-rows // split)
            if split > rows or (split > 1 and rp * (split - 1) >= rows):
                continue  # a group with no rows
            for nr in (1, 2, 4, 8):
                if nr * rp <= 64 and (nr < 8 or rp <= 4):  # 8 weight rows' blocks fill the registers
                    out.append(GemvConfig(kernel, nr, split))
                    if kernel == "q8_gemv" and nr * rp >= 32:
                        out.append(GemvConfig(kernel, nr, split, occ=2))
                    if kernel == "q8_gemv" and nr <= 4 and nr * rp <= 8:  # more weights in flight, few blocks
                        out += [GemvConfig(kernel, nr, split, depth=depth) for depth in (2, 3)]
    return out
