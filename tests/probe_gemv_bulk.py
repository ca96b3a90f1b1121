"""Does a one-row GEMV that streams its weights with Hopper's bulk copies (cp.async.bulk into shared memory, one
mbarrier a stage) read closer to the read ceiling than refspec's production one-row GEMV (device machine; a tool,
not a test)?

Why: the production one-row GEMV (kernels_raw/q8_gemv.hip, q8_gemv<1, 2, 1, 1>) keeps one round of a warp's loads
in flight, in registers; a matrix of few rows (llama-8b's down projection: 4096 rows, 2048 warps, about 16 a
multiprocessor) then has about 31 KB a multiprocessor in flight, and reads at about 80 % of the ceiling, while a
streaming read with 128 KB a multiprocessor in flight reads at 97 % (tests/probe_grid_barrier.py). Deeper rings in
registers (DEPTH 2-3) and a cp.async ring of 16-byte copies did not pay (docs/gpu-performance-log.md).

q8_gemv_bulk<NR, STAGES>: blocks of 4 warps; warp g owns weight rows row0 .. row0+NR-1 and one activation row.
Round j of a row is its 32 blocks 32j .. 32j+31: 1024 contiguous bytes of quants and 64 of scales. Lane 0 of the
warp copies round j of its NR rows into stage j % STAGES of the warp's own ring with 2*NR bulk copies that
complete on that stage's mbarrier, STAGES rounds ahead; the lanes wait for the stage, take block 32j + lane of each
row into registers, release the stage (a __syncwarp, then lane 0 refills it with round j + STAGES), and add the
block to their sums as production does: lane l adds block 32j + l in increasing j, then the spec's tree. Same
operations, same bits (checked here against production on each shape). Needs K % 1024 == 0 (whole rounds).

    python3 tests/probe_gemv_bulk.py [SHAPES] [CONFIGS] [REPEATS]

SHAPES: NxK,... (default llama-8b's and qwen2.5-32b's one-row shapes); CONFIGS: NR/STAGES,... (default
1/4,1/8,2/2,2/4,2/5,4/2; a ring is at most 48 KB a block). Prints JSON: us per GEMV for production and each
config, the fraction of the read ceiling, and whether the bits equal production's. Measured: nowhere faster
(docs/gpu-performance-log.md, "Bulk copies"; tests/results/gemv_bulk_probe_2026_12_04_h200.json).
"""
from __future__ import annotations

import datetime
import json
import sys

import numpy as np

from refspec.bench_gemv import _Timer, read_bandwidth
from refspec.gpu import COMPILE_OPTIONS, GpuBackend, kernel_source

from graph_timing import graph_seconds, one_row_operands, one_row_reference

shapes = [tuple(int(v) for v in s.split("x")) for s in (sys.argv[1] if len(sys.argv) > 1 else
          "6144x4096,4096x4096,28672x4096,4096x14336,128256x4096,7168x5120,5120x5120,55296x5120,5120x27648").split(",")]
configs = [tuple(int(v) for v in c.split("/")) for c in (sys.argv[2] if len(sys.argv) > 2 else
           "1/4,1/8,2/2,2/4,2/5,4/2").split(",")]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 20

BULK = r'''
// ------------------------------------------------------------------------------------------- q8_gemv_bulk
RS_DEVICE unsigned rs_shared_address(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

RS_DEVICE void rs_stage_init(unsigned long long* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(rs_shared_address(bar)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

RS_DEVICE void rs_stage_expect(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(rs_shared_address(bar)), "r"(bytes)
               : "memory");
}

RS_DEVICE void rs_bulk_copy(void* dst, const void* src, unsigned bytes, unsigned long long* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(rs_shared_address(dst)), "l"(src), "r"(bytes), "r"(rs_shared_address(bar)) : "memory");
}

RS_DEVICE void rs_stage_wait(unsigned long long* bar, unsigned parity) {
  asm volatile("{\n\t.reg .pred done;\n"
               "WAIT:\n\tmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "\t@!done bra WAIT;\n}" ::"r"(rs_shared_address(bar)), "r"(parity) : "memory");
}

template <int NR>
struct RsBulkStage {
  int4 q[NR][2 * RS_LANES];          // round j of each row: 32 blocks of 32 bytes
  unsigned short d[NR][RS_LANES];    // their scales
};

template <int NR>
RS_DEVICE void rs_bulk_round(RsBulkStage<NR>& stage, unsigned long long* bar, const signed char* wq,
                             const unsigned short* wd, long long row0, int n, int k, int j) {
  const int nb = k / RS_QK;
  rs_stage_expect(bar, sizeof(RsBulkStage<NR>));
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    const long long row = row0 + i < n ? row0 + i : n - 1;
    rs_bulk_copy(stage.q[i], wq + row * k + (long long)j * RS_LANES * RS_QK, RS_LANES * RS_QK, bar);
    rs_bulk_copy(stage.d[i], wd + row * nb + (long long)j * RS_LANES, RS_LANES * 2, bar);
  }
}

template <int NR, int STAGES>
__global__ void __launch_bounds__(RS_GEMV_THREADS)
q8_gemv_bulk(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
             const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
             float* __restrict__ y, int n, int k, const float* base) {
  __shared__ RsBulkStage<NR> ring[RS_GEMV_THREADS / RS_LANES][STAGES];
  __shared__ unsigned long long full[RS_GEMV_THREADS / RS_LANES][STAGES];
  const int g = rs_group(), lane = rs_lane();
  const long long row0 = ((long long)blockIdx.x * rs_groups() + g) * NR;
  const int nb = k / RS_QK, rounds = nb / RS_LANES;
  const bool active = row0 < n;
  if (active && lane == 0) {
    for (int s = 0; s < STAGES; ++s) rs_stage_init(&full[g][s]);
    for (int j = 0; j < STAGES && j < rounds; ++j) rs_bulk_round<NR>(ring[g][j], &full[g][j], wq, wd, row0, n, k, j);
  }
  __syncwarp();
  rs_kernel_begin();
  if (!active) return;
  float acc[NR][1];
#pragma unroll
  for (int i = 0; i < NR; ++i) acc[i][0] = 0.0f;
  for (int j = 0; j < rounds; ++j) {
    const int s = j % STAGES;
    rs_stage_wait(&full[g][s], (j / STAGES) & 1);
    int4 lo[NR], hi[NR];
    float ws[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) {
      lo[i] = ring[g][s].q[i][2 * lane];
      hi[i] = ring[g][s].q[i][2 * lane + 1];
      ws[i] = rs_half_to_float(ring[g][s].d[i][lane]);
    }
    __syncwarp();
    if (lane == 0 && j + STAGES < rounds) rs_bulk_round<NR>(ring[g][s], &full[g][s], wq, wd, row0, n, k, j + STAGES);
    const int b = j * RS_LANES + lane;
    const int4* px = (const int4*)(xq + (long long)b * RS_QK);
    const int4 x0 = px[0], x1 = px[1];
    const float xs = rs_half_to_float(xd[b]);
#pragma unroll
    for (int i = 0; i < NR; ++i) acc[i][0] = rs_gemv_step(acc[i][0], ws[i], xs, rs_block_dot(lo[i], hi[i], x0, x1));
  }
  rs_gemv_finish<1, NR>(acc, row0, n, 0, 1, y, base);
}
'''

be = GpuBackend()
cp = be.cp
from cupy.cuda import compiler  # noqa: E402

expressions = [f"q8_gemv_bulk<{nr}, {st}>" for nr, st in configs]
binary, mapping = compiler.compile_using_nvrtc(kernel_source("q8_gemv") + BULK, COMPILE_OPTIONS["cuda"],
                                               filename="probe_gemv_bulk.cu", name_expressions=expressions)
module = cp.cuda.function.Module()
module.load(binary)
fns = {c: module.get_function(mapping[e]) for c, e in zip(configs, expressions)}

timer = _Timer(cp, repeats)
ceiling = read_bandwidth(be, timer)
results = []
rng = np.random.default_rng(0)
for n, k in shapes:
    weight_bytes, ws, xq, xd = one_row_operands(cp, be, rng, n, k, 2)
    copies = len(ws)
    config, y, base, reference = one_row_reference(cp, be, rng, ws, xq, xd)

    def production():
        for w in ws:
            be.launch_gemv(config, w, xq, xd, y)

    row = {"shape": f"{n}x{k}", "copies": copies, "ceiling_us": weight_bytes / ceiling * 1e6,
           "production": {"config": str(config), "us": graph_seconds(cp, production, repeats) / copies * 1e6}}
    for (nr, st), fn in fns.items():
        key = f"{nr}/{st}"
        if k % 1024:
            row[key] = "K % 1024 != 0"
            continue
        grid = (-(-n // (4 * nr)),)

        def bulk(fn=fn, grid=grid, b=None, ws=ws):
            for w in ws:
                be._launcher.launch(fn, grid, (128,), (w.q, w.d, xq, xd, y, np.int32(n), np.int32(k), b))

        y.fill(0)
        be._launcher.launch(fn, grid, (128,), (ws[0].q, ws[0].d, xq, xd, y, np.int32(n), np.int32(k), base))
        same = bool((cp.asnumpy(y).view(np.uint32) == reference).all())
        row[key] = {"us": graph_seconds(cp, bulk, repeats) / copies * 1e6, "bits_equal_production": same}
    for key, v in row.items():
        if isinstance(v, dict) and "us" in v:
            v["fraction_of_read"] = round(row["ceiling_us"] / v["us"], 3)
            v["us"] = round(v["us"], 2)
    row["ceiling_us"] = round(row["ceiling_us"], 2)
    print(json.dumps(row), flush=True)
    results.append(row)

print(json.dumps({"hardware": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "read_bytes_per_second": ceiling, "results": results}))
