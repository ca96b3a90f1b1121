"""Does a one-row GEMV whose work a multiprocessor takes from a shared pool, in units far smaller than a warp's
rows, finish closer to the read ceiling than production (device machine; a tool, not a test)? No: run on
2026-12-04 (H200, tests/results/gemv_pool_probe_2026_12_04_h200.json), its bits equal production's on all five
shapes, also after many replays with the count far along, and no watchdog fired; but it took 2.7-4.3x
production's time (4096 x 14336 44.9 against 16.4 us, 6144 x 4096 26.9 against 6.75, 5120 x 27648 87.8 against
38.7). Likely causes, not measured apart: a warp keeps one item (one round of one row, about 1 KB) in flight
where production's keep a round of two rows, and every slot waits for the one before it to be claimed. Each spin has a watchdog that gives up, sets a flag and
lets the kernel end, and the probe reports it.

Why (docs/gpu-performance-log.md, "Then even blocks"): on 4096 x 14336 with even blocks, multiprocessors with the same work (16 warps,
2 rows each) ended 13.9 (p10), 14.2 (p50) and 16.3-16.6 us (last) after the first warp passed its wait; 6144 x
4096 p50 5.5 against 6.3-7.3, 4096 x 4096 p50 3.5 against 4.5-5.0. Not placement, not the same multiprocessors
each time. Work handed out as each multiprocessor gets through its own would end them together, if the units are
short: a warp's two rows take about 7 us, too long to balance anything.

q8_gemv_pool: one block of 32 warps a multiprocessor (a persistent grid). A unit is M consecutive rows (M =
ceil(32 / R), R = K / 1024 rounds a row, so a unit has at least one item a warp); an item is one round of one row:
32 blocks, block 32j + l to lane l, its term (f32(wd) * f32(xd)) * dot into shared memory. The block's units form
a stream of slots; warp w takes stream positions w, w + 32, ... (each position an item of slot position / MR),
loading the next item's weights while it computes the current one (one item in flight a warp, as production's
depth 1). Slots 0-3 are static (units b, b + G, b + 2G, b + 3G of G blocks); the warp that completes a slot's
last item adds each lane's terms of each row in increasing round (the spec's per-lane order: block l + 32j in
increasing j), runs the spec's tree, stores the row, and then claims the unit of slot s + 4 from a 64-bit count
in global memory (slot order: it waits for slot s - 1's claim first), and publishes it where slot s's terms were.
A launch makes exactly U - 4G + G claims when U > 4G (one failing claim a block), none otherwise, so the count
needs no reset between graph replays: a claim c is unit 4G + c % (U - 3G).

Same terms, same order, same tree: the bits of production (checked here on each shape). Needs K % 1024 == 0.

    python3 tests/probe_gemv_pool.py [SHAPES] [REPEATS]
    python3 tests/probe_gemv_pool.py --simulate     (no GPU: the slot protocol, modelled in Python)

--simulate runs the protocol (publication, in-order claims, slot reuse, the count across launches) with warps
interleaved at random, 300 random grids and shapes, 3 launches each sharing one count, and checks that every unit is
done exactly once, that each launch makes exactly the claims it should, and that nothing deadlocks (passed when
written).

Prints JSON: us per GEMV for production and the pool, the fraction of the read ceiling, whether the bits equal
production's, and whether a watchdog fired.
"""
from __future__ import annotations

import datetime
import json
import random
import sys

import numpy as np

from refspec.bench_gemv import _Timer, read_bandwidth
from refspec.gpu import COMPILE_OPTIONS, GpuBackend, kernel_source
from refspec.gpu_launch import Kernel

from graph_timing import graph_seconds, one_row_operands, one_row_reference

WARPS, SLOTS = 32, 4


def simulate_launch(G, W, units, per_slot, count, rng):
    """One launch of G blocks of W warps over `units` units of per_slot items, as the kernel's protocol runs
    (its waits as yields; a random scheduler picks the next warp step); count: the global count, [int]."""
    claims = units > SLOTS * G
    per_launch = units - (SLOTS - 1) * G
    processed = []
    nclaims = [0]
    blocks = []
    for b in range(G):
        blk = {"published": [(s, b + s * G if b + s * G < units else -1) for s in range(SLOTS)],  # (slot, unit)
               "items_done": [0] * SLOTS, "ended": False}
        blocks.append(blk)

    def unit_of(blk, slot):
        v = blk["published"][slot % SLOTS]
        return v[1] if v[0] == slot else None  # None: not yet published

    def warp(b, w):
        blk = blocks[b]
        p = w
        unit = b if b < units else -1
        while unit >= 0:
            slot = p // per_slot
            q = p + W
            while True:
                nu = unit_of(blk, q // per_slot)
                if nu is not None:
                    break
                yield "wait"
            yield "step"
            blk["items_done"][slot % SLOTS] += 1
            done = blk["items_done"][slot % SLOTS]
            yield "step"
            if done == per_slot:
                processed.append(unit)
                if slot > 0:
                    while unit_of(blk, slot - 1 + SLOTS) is None:
                        yield "wait"
                blk["items_done"][slot % SLOTS] = 0
                target = slot + SLOTS
                claimed = -1
                if not claims:
                    f = b + target * G
                    claimed = f if f < units else -1
                elif not blk["ended"]:
                    c = count[0] % per_launch
                    count[0] += 1
                    nclaims[0] += 1
                    yield "step"
                    claimed = SLOTS * G + c
                    if claimed >= units:
                        claimed, blk["ended"] = -1, True
                blk["published"][slot % SLOTS] = (target, claimed)
                yield "step"
            p, unit = q, nu

    gens = [warp(b, w) for b in range(G) for w in range(W)]
    live = list(range(len(gens)))
    stall = 0
    while live:
        i = rng.choice(live)
        try:
            r = next(gens[i])
            stall = stall + 1 if r == "wait" else 0
            if stall > 200000:
                raise RuntimeError("deadlock")
        except StopIteration:
            live.remove(i)
    assert sorted(processed) == list(range(units)), (len(processed), units)
    if claims:
        assert nclaims[0] == per_launch, (nclaims[0], per_launch)
    else:
        assert nclaims[0] == 0
    return nclaims[0]


if sys.argv[1:2] == ["--simulate"]:
    rng = random.Random(1)
    for _ in range(300):
        G, W, rounds = rng.randint(1, 6), rng.choice([2, 3, 4, 8]), rng.randint(1, 6)
        per_slot, count = -(-W // rounds) * rounds, [0]
        units = rng.randint(G, 40 * G)
        for _ in range(3):
            simulate_launch(G, W, units, per_slot, count, rng)
    print("the slot protocol: every unit once, the claims a launch should make, no deadlock (300 grids x 3)")
    sys.exit(0)

shapes = [tuple(int(v) for v in s.split("x")) for s in (sys.argv[1] if len(sys.argv) > 1 else
          "4096x14336,6144x4096,4096x4096,28672x4096,5120x27648").split(",")]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20

POOL = r'''
// ------------------------------------------------------------------------------------------- q8_gemv_pool
#define RS_POOL_WARPS 32
#define RS_POOL_SLOTS 4
#define RS_POOL_SPIN_LIMIT 20000000  // spins before a wait gives up (a bug, not a slow GPU: ~1 s)

// A published slot: (slot + 1) << 32 | (unit + 1); unit + 1 == 0 means the stream ends there.
RS_DEVICE long long rs_pool_tag(long long slot, long long unit) { return ((slot + 1) << 32) | (unit + 1); }

// The unit of stream slot `slot`, once published (-1: the end); gives up (-1, *watchdog = 1) after the limit.
RS_DEVICE long long rs_pool_unit(volatile long long* published, long long slot, int* watchdog) {
  for (long long spins = 0; spins < RS_POOL_SPIN_LIMIT; ++spins) {
    const long long v = published[slot % RS_POOL_SLOTS];
    if ((v >> 32) == slot + 1) {
      __threadfence_block();  // (what its publisher wrote before it is seen after)
      return (v & 0xffffffffLL) - 1;
    }
  }
  atomicExch(watchdog, 1);
  return -1;
}

struct RsPoolItem {
  int4 lo, hi;
  unsigned short scale;
};

// Item `item` (row item / R of the unit, round item % R) of unit `unit`: lane's block of it.
RS_DEVICE RsPoolItem rs_pool_load(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
                                  long long unit, int item, int m, int rounds, int n, int k) {
  const int nb = k / RS_QK;
  long long row = unit * m + item / rounds;
  row = row < n ? row : n - 1;  // rows past the end: read as the last, never stored
  const int b = (item % rounds) * RS_LANES + rs_lane();
  const int4* p = (const int4*)(wq + row * k + (long long)b * RS_QK);
  RsPoolItem it;
  it.lo = p[0];
  it.hi = p[1];
  it.scale = wd[row * nb + b];
  return it;
}

__global__ void __launch_bounds__(RS_POOL_WARPS * RS_LANES, 1)
q8_gemv_pool(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
             const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
             float* __restrict__ y, int n, int k, const float* base, unsigned long long* count, int m,
             int claims, int* watchdog) {
  extern __shared__ float rs_pool_terms[];  // [RS_POOL_SLOTS][m * rounds][32]
  __shared__ long long published[RS_POOL_SLOTS];
  __shared__ int items_done[RS_POOL_SLOTS];
  __shared__ int ended;
  const int warp = rs_group(), lane = rs_lane();
  const int rounds = k / (RS_QK * RS_LANES), per_slot = m * rounds;
  const long long units = (n + m - 1) / m, grid = gridDim.x;
  if (threadIdx.x == 0) {
    for (int s = 0; s < RS_POOL_SLOTS; ++s) {
      const long long unit = blockIdx.x + s * grid;
      published[s] = rs_pool_tag(s, unit < units ? unit : -1);
      items_done[s] = 0;
    }
    ended = 0;
  }
  __syncthreads();
  // Position p of the stream: slot p / per_slot, item p % per_slot. per_slot >= 32, so warp's first position is
  // in slot 0, whose unit is static: its weights are loaded before the wait.
  long long p = warp;
  long long unit = blockIdx.x < units ? (long long)blockIdx.x : -1;
  RsPoolItem cur;
  if (unit >= 0) cur = rs_pool_load(wq, wd, unit, (int)(p % per_slot), m, rounds, n, k);
  rs_kernel_begin();
  while (unit >= 0) {
    const long long slot = p / per_slot;
    const int item = (int)(p % per_slot);
    // the next position's weights go out before this item's arithmetic
    const long long q = p + RS_POOL_WARPS;
    const long long next_unit = rs_pool_unit(published, q / per_slot, watchdog);
    RsPoolItem nxt = cur;
    if (next_unit >= 0) nxt = rs_pool_load(wq, wd, next_unit, (int)(q % per_slot), m, rounds, n, k);
    const int b = (item % rounds) * RS_LANES + lane;
    const int4* px = (const int4*)(xq + (long long)b * RS_QK);
    const float term = rs_mul(rs_mul(rs_half_to_float(cur.scale), rs_half_to_float(xd[b])),
                              rs_block_dot(cur.lo, cur.hi, px[0], px[1]));
    float* terms = rs_pool_terms + (slot % RS_POOL_SLOTS) * per_slot * RS_LANES;
    terms[item * RS_LANES + lane] = term;
    __threadfence_block();
    __syncwarp();
    int done = 0;
    if (lane == 0) {
      __threadfence_block();
      done = atomicAdd(&items_done[slot % RS_POOL_SLOTS], 1) + 1;
    }
    done = __shfl_sync(0xffffffffu, done, 0);
    if (done == per_slot) {  // this warp completed the slot: its rows, then the claim of slot + SLOTS
      __threadfence_block();
      for (int i = 0; i < m; ++i) {
        float acc[1][1] = {{0.0f}};  // lane value: +0.0, then its terms in increasing round
        for (int j = 0; j < rounds; ++j) acc[0][0] = rs_add(acc[0][0], terms[(i * rounds + j) * RS_LANES + lane]);
        rs_gemv_finish<1, 1>(acc, unit * m + i, n, 0, 1, y, base);
      }
      __syncwarp();
      if (lane == 0) {
        if (slot > 0) rs_pool_unit(published, slot - 1 + RS_POOL_SLOTS, watchdog);  // claims in slot order
        items_done[slot % RS_POOL_SLOTS] = 0;
        long long claimed = -1;
        const long long target = slot + RS_POOL_SLOTS;
        if (!claims) {
          const long long fixed = blockIdx.x + target * grid;
          claimed = fixed < units ? fixed : -1;
        } else if (!ended) {
          const long long per_launch = units - (RS_POOL_SLOTS - 1) * grid;  // U - 4G successes + G failures
          const long long c = (long long)(atomicAdd(count, 1ull) % (unsigned long long)per_launch);
          claimed = RS_POOL_SLOTS * grid + c;
          if (claimed >= units) {
            claimed = -1;
            ended = 1;
          }
        }
        __threadfence_block();
        ((volatile long long*)published)[slot % RS_POOL_SLOTS] = rs_pool_tag(target, claimed);
      }
      __syncwarp();
    }
    p = q;
    unit = next_unit;
    cur = nxt;
  }
}
'''

be = GpuBackend()
cp = be.cp
from cupy.cuda import compiler  # noqa: E402

binary, mapping = compiler.compile_using_nvrtc(kernel_source("q8_gemv") + POOL, COMPILE_OPTIONS["cuda"],
                                               filename="probe_gemv_pool.cu", name_expressions=["q8_gemv_pool"])
module = cp.cuda.function.Module()
module.load(binary)
pool = module.get_function(mapping["q8_gemv_pool"])
kernel = Kernel(pool, be)
sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]

timer = _Timer(cp, repeats)
ceiling = read_bandwidth(be, timer)
results = []
rng = np.random.default_rng(0)
for n, k in shapes:
    row = {"shape": f"{n}x{k}"}
    if k % 1024:
        row["skipped"] = "K % 1024 != 0"
        results.append(row)
        continue
    weight_bytes, ws, xq, xd = one_row_operands(cp, be, rng, n, k, 2)
    copies = len(ws)
    config, y, base, reference = one_row_reference(cp, be, rng, ws, xq, xd)

    rounds = k // 1024
    m = -(-WARPS // rounds)
    units = -(-n // m)
    shared = SLOTS * m * rounds * 32 * 4
    kernel.allow_shared(shared)
    grid = min(units, sms * kernel.resident_blocks(WARPS * 32, shared))
    claims = int(units > SLOTS * grid)
    count = cp.zeros(1, np.uint64)
    watchdog = cp.zeros(1, np.int32)

    def launch(w, b=None):
        kernel((grid,), (WARPS * 32,), (w.q, w.d, xq, xd, y, np.int32(n), np.int32(k), b, count, np.int32(m),
                                        np.int32(claims), watchdog), shared_mem=shared)

    def production():
        for w in ws:
            be.launch_gemv(config, w, xq, xd, y)

    def pooled():
        for w in ws:
            launch(w)

    y.fill(0)
    launch(ws[0], base)
    cp.cuda.Device().synchronize()
    same = bool((cp.asnumpy(y).view(np.uint32) == reference).all())
    fired = bool(cp.asnumpy(watchdog)[0])
    row.update({"copies": copies, "ceiling_us": round(weight_bytes / ceiling * 1e6, 2),
                "m": m, "units": units, "grid": grid, "claims": bool(claims), "shared": shared,
                "bits_equal_production": same, "watchdog": fired})
    if same and not fired:
        for label, fn in (("production", production), ("pool", pooled), ("production_again", production)):
            us = graph_seconds(cp, fn, repeats) / copies * 1e6
            row[label] = {"us": round(us, 2), "fraction_of_read": round(weight_bytes / ceiling / us * 1e6, 3)}
        launch(ws[0], base)  # after many replays (the count far along): the same bits still
        cp.cuda.Device().synchronize()
        row["bits_equal_after_replays"] = bool((cp.asnumpy(y).view(np.uint32) == reference).all())
        row["watchdog_after_replays"] = bool(cp.asnumpy(watchdog)[0])
    print(json.dumps(row), flush=True)
    results.append(row)

print(json.dumps({"hardware": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "read_bytes_per_second": ceiling, "results": results}))
