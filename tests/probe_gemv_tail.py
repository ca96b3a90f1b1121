"""When does each warp of a one-row GEMV start and finish (device machine; a tool, not a test)? The question: the
one-row GEMVs of matrices with few, long rows (llama-8b's down projection, 4096 x 14336: 2048 warps, one partial
wave) read at 74-80 % of the read ceiling, those with many rows (its output layer, 128256 x 4096) at 98 %, and
neither deeper register rings nor bulk copies into shared memory (tests/probe_gemv_bulk.py) raised the first. If
the warps of one wave finish at different times, the memory idles in the tail.

The kernel is production's one-row path (q8_gemv<1, 2, 1, 1, DEPTH>'s own functions, the DEPTH GpuBackend
chooses) with %globaltimer read by each warp: at its start, after rs_kernel_begin and at its end, and its
multiprocessor's id. Launched over COPIES weight copies in one captured graph, as bench gemv times them; the stamps
of the copies after the first are summarised: the kernel's span (first start to last end), each warp's end
after the first warp passed rs_kernel_begin (percentiles), per multiprocessor too, and the gap from a copy's last
warp end to the next copy's first warp past its wait.

    python3 tests/probe_gemv_tail.py [SHAPES] [REPEATS]

Each shape runs three ways: as launched today, and with dynamic shared memory (unused) that caps the blocks a
multiprocessor holds at ceil(blocks / multiprocessors) and at one more: us per GEMV (graph replays) and the stamps.
"""
from __future__ import annotations

import datetime
import json
import os
import sys

import numpy as np

from refspec.bench_gemv import _Timer, read_bandwidth
from refspec.gpu import COMPILE_OPTIONS, GpuBackend, kernel_source
from refspec.gpu_launch import Kernel

from graph_timing import graph_seconds, one_row_operands

shapes = [tuple(int(v) for v in s.split("x")) for s in (sys.argv[1] if len(sys.argv) > 1 else
          "4096x14336,28672x4096,6144x4096,4096x4096,128256x4096,5120x27648").split(",")]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20

STAMPED = r'''
RS_DEVICE unsigned long long rs_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

template <int DEPTH>
__global__ void RS_GEMV_BOUNDS(RS_GEMV_THREADS, 1)
q8_gemv_stamped(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
                const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
                float* __restrict__ y, int n, int k, unsigned long long* stamps) {
  const unsigned long long t0 = rs_now();
  long long row0;
  int r0;
  rs_gemv_place<2, 1>(1, row0, r0);
  RsWeightBlocks<2> ring[DEPTH];
  rs_gemv_first_blocks<2, DEPTH>(ring, wq, wd, row0, n, k);
  rs_kernel_begin();
  const unsigned long long t1 = rs_now();
  if (row0 < n) rs_gemv_rows<1, 2, DEPTH>(ring, wq, wd, xq, xd, y, row0, n, k, 0, 1, nullptr);
  const unsigned long long t2 = rs_now();
  unsigned smid;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  if (rs_lane() == 0) {
    unsigned long long* s = stamps + 4 * ((long long)blockIdx.x * rs_groups() + rs_group());
    s[0] = smid;
    s[1] = t0;
    s[2] = t1;
    s[3] = t2;
  }
}
'''

be = GpuBackend()
cp = be.cp
from cupy.cuda import compiler  # noqa: E402

expressions = [f"q8_gemv_stamped<{d}>" for d in (1, 2, 3)]
binary, mapping = compiler.compile_using_nvrtc(kernel_source("q8_gemv") + STAMPED, COMPILE_OPTIONS["cuda"],
                                               filename="probe_gemv_tail.cu", name_expressions=expressions)
module = cp.cuda.function.Module()
module.load(binary)
fns = {d: module.get_function(mapping[e]) for d, e in zip((1, 2, 3), expressions)}
ceiling = read_bandwidth(be, _Timer(cp, repeats))


def pct(a, q):
    return round(float(np.percentile(a, q)) / 1000, 2)


sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]


def capped_shared(kernel: Kernel, cap: int | None) -> int:
    """Dynamic shared memory (bytes, none used) that lets at most `cap` blocks of 128 threads on a multiprocessor."""
    if cap is None:
        return 0
    shared = 0
    while kernel.resident_blocks(128, shared) > cap:
        shared += 1024
        kernel.allow_shared(shared)
    return shared


def summarise(s: np.ndarray) -> dict:
    spans, ends, sm_ends, begins = [], [], [], []
    by_count: dict[int, list[float]] = {}
    sm_last = []
    for c in s:
        first_begin = c[:, 2].min()
        spans.append((c[:, 3].max() - c[:, 1].min()) / 1000)
        begins.append((c[:, 2].max() - first_begin) / 1000)
        e = c[:, 3] - first_begin
        ends.append(e)
        sm = c[:, 0].astype(np.int64)
        count = np.bincount(sm, minlength=256)
        last = np.zeros(256)
        np.maximum.at(last, sm, e / 1000)
        sm_last.append(last)
        sm_ends.append(last[count > 0] * 1000)
        for i in np.flatnonzero(count):
            by_count.setdefault(int(count[i]), []).append(float(last[i]))
    # placement: a multiprocessor's first block start (before its wait) after the copy's first warp passed its
    # wait (negative: placed while the GEMV before still ran), against its last end
    placed, finished = [], []
    for c in s:
        first_begin = c[:, 2].min()
        sm = c[:, 0].astype(np.int64)
        start = np.full(256, np.iinfo(np.int64).max)
        np.minimum.at(start, sm, c[:, 1] - first_begin)
        last = np.full(256, np.iinfo(np.int64).min)
        np.maximum.at(last, sm, c[:, 3] - first_begin)
        used = np.flatnonzero(np.bincount(sm, minlength=256))
        placed.append(start[used] / 1000)
        finished.append(last[used] / 1000)
    placed, finished = np.concatenate(placed), np.concatenate(finished)
    ends, sm_ends = np.concatenate(ends), np.concatenate(sm_ends)
    sm_last = np.array(sm_last)
    used = np.flatnonzero(sm_last.max(axis=0) > 0)
    return {"span_us_median": round(float(np.median(spans)), 2),
            "last_begin_after_first_us": round(float(np.median(begins)), 2),
            "warp_end_us_p10_p50_p90_max": [pct(ends, q) for q in (10, 50, 90, 100)],
            "sm_last_end_us_p10_p50_p90_max": [pct(sm_ends, q) for q in (10, 50, 90, 100)],
            "sm_last_end_us_by_warps_on_it": {w: [len(v), round(float(np.mean(v)), 2)]
                                              for w, v in sorted(by_count.items())},
            "sm_placed_us_p10_p50_p90_max": [round(float(np.percentile(placed, q)), 2) for q in (10, 50, 90, 100)],
            "sm_placed_vs_end_correlation": float(np.corrcoef(placed, finished)[0, 1]),
            "sm_end_correlation_between_copies": (float(np.corrcoef(sm_last[0, used], sm_last[1, used])[0, 1])
                                                  if len(sm_last) > 1 else None)}


results = []
rng = np.random.default_rng(0)
for n, k in shapes:
    weight_bytes, ws, xq, xd = one_row_operands(cp, be, rng, n, k, 3)
    copies = len(ws)
    y = cp.empty((1, n), np.float32)
    config = be.gemv_config(1, k, n)
    depth = config.depth if config.kernel == "q8_gemv" and config.nr == 2 and config.split == 1 else 1
    depth = int(os.environ.get("DEPTH", depth))  # DEPTH=2 or 3: every shape at that depth
    warps = -(-n // 2)
    grid = (-(-warps // 4),)
    stamps = cp.zeros((copies, grid[0] * 4, 4), np.uint64)
    kernel = Kernel(fns[depth], be)
    fair = -(-grid[0] // sms)
    row = {"shape": f"{n}x{k}", "depth": depth, "warps": warps, "blocks": grid[0], "copies": copies,
           "ceiling_us": round(weight_bytes / ceiling * 1e6, 2)}
    for cap in (None, fair, fair + 1):
        shared = capped_shared(kernel, cap)

        def launch():
            for c, w in enumerate(ws):
                be._launcher.launch(fns[depth], grid, (128,), (w.q, w.d, xq, xd, y, np.int32(n), np.int32(k),
                                                               stamps[c]), shared)

        seconds = graph_seconds(cp, launch, repeats) / copies
        every = cp.asnumpy(stamps)[:, :warps].astype(np.int64)
        s = every[1:]  # copies after the first, real warps
        # the boundary: from the last warp's end of a copy to the first warp's passing of the wait in the next
        gaps = [(every[c, :, 2].min() - every[c - 1, :, 3].max()) / 1000 for c in range(1, copies)]
        row[f"cap_{cap}"] = {"shared": shared, "us": round(seconds * 1e6, 2),
                             "gap_us_median_max": [round(float(np.median(gaps)), 2), round(float(max(gaps)), 2)],
                             **summarise(s)}
    print(json.dumps(row), flush=True)
    results.append(row)

print(json.dumps({"hardware": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "results": results}))
