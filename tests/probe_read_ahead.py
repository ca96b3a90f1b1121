"""Does reading the next GEMV's weights into the L2 cache while the small kernels between GEMVs run pay, and
from where (device machine; a tool, not a test)? A chain of COUNT pairs GEMV A -> small kernel -> GEMV B -> small
kernel, as a decode pass alternates its GEMVs with small kernels, captured as one graph with overlapped
launches; the small kernel spins for SPIN cycles on one thread a block (132 blocks; it touches no memory). Each
GEMV's successor is the other matrix. Timed per pair of GEMVs, in turn, with the small kernel asking for the
first BYTES of the next matrix's quants (and bytes / 16 of its scales):

    early        bulk requests (cp.async.bulk.prefetch.L2, 4 KiB each), before it waits for the GEMV (it starts
                 while the GEMV's last blocks run)
    after        bulk requests, once the GEMV has finished
    alone        `after`, with a small kernel that does not spin: what the requests themselves cost
    lines_early  prefetch.global.L2::evict_last of each 128-byte line, before the wait
    lines_after  the same, after it
    lines_alone  `lines_after`, no spin

    python3 tests/probe_read_ahead.py [NA,KA,NB,KB] [MB,...] [SPIN] [COUNT] [REPEATS] [MODES]

Prints JSON: us per pair for each mode and size, beside none (no requests) and the GEMVs alone. A third
place, the GEMV's own last wave as its blocks finish (mode `exit`), was measured with commit be911a0, which
had it in kernels_raw/q8_gemv.hip (GpuBackend(read_ahead=...), tests/profile_read_ahead.py for whole
decodes); that commit's successor removed it. tests/results/probe_read_ahead_h200.json has the numbers.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.gpu import COMPILE_OPTIONS, GpuBackend, GpuQ8, kernel_dir
from refspec.gpu_mappings import GEMV_CONFIGS

from graph_timing import graph_seconds

shape = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "6144,4096,4096,4096").split(",")]
sizes = [float(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "4,8,16").split(",")]
spin = int(sys.argv[3]) if len(sys.argv) > 3 else 8000
count = int(sys.argv[4]) if len(sys.argv) > 4 else 20
repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 30
modes = (sys.argv[6] if len(sys.argv) > 6 else "early,after,alone,lines_early,lines_after,lines_alone").split(",")

SOURCE = (kernel_dir() / "portable.h").read_text() + r'''
#define CHUNK 4096
static __device__ void bulk_range(const void* p, long long bytes, long long part, long long parts) {
  for (long long off = part * CHUNK; off < bytes; off += parts * CHUNK) {
    const unsigned size = (unsigned)(bytes - off < CHUNK ? bytes - off : CHUNK);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"((const char*)p + off), "r"(size) : "memory");
  }
}

static __device__ void bulk_ahead(const signed char* q, const unsigned short* d, long long bytes) {
  const long long parts = (long long)gridDim.x * blockDim.x, part = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  bulk_range(q, bytes, part, parts);
  bulk_range(d, bytes / 16, parts - 1 - part, parts);
}

static __device__ void lines_ahead(const signed char* q, const unsigned short* d, long long bytes) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x, all = (long long)gridDim.x * blockDim.x;
  for (long long off = t * 128; off < bytes; off += all * 128) asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(q + off));
  for (long long off = t * 128; off < bytes / 16; off += all * 128) asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"((const char*)d + off));
}

extern "C" __global__ void probe_small(const signed char* q, const unsigned short* d, long long bytes, int mode,
                                       long long spin) {
  if (mode == 1) bulk_ahead(q, d, bytes);
  if (mode == 3) lines_ahead(q, d, bytes);
  rs_kernel_begin();
  if (mode == 2) bulk_ahead(q, d, bytes);
  if (mode == 4) lines_ahead(q, d, bytes);
  if (threadIdx.x == 0) {
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
  }
  __syncthreads();
}
'''

be = GpuBackend()
cp = be.cp
from cupy.cuda import compiler  # noqa: E402

binary, _ = compiler.compile_using_nvrtc(SOURCE, COMPILE_OPTIONS["cuda"], filename="probe.cu")
module = cp.cuda.function.Module()
module.load(binary)
small = module.get_function("probe_small")
rng = np.random.default_rng(0)


def matrix(n, k):
    return GpuQ8(q=cp.asarray(rng.integers(-127, 128, (n, k), dtype=np.int8)),
                 d=cp.asarray(rng.uniform(0.001, 0.01, (n, k // 32)).astype(np.float16)))


a, b = matrix(shape[0], shape[1]), matrix(shape[2], shape[3])
xa = (cp.asarray(rng.integers(-127, 128, (1, shape[1]), dtype=np.int8)), cp.ones((1, shape[1] // 32), np.float16))
xb = (cp.asarray(rng.integers(-127, 128, (1, shape[3]), dtype=np.int8)), cp.ones((1, shape[3] // 32), np.float16))
ya, yb = cp.empty((1, shape[0]), np.float32), cp.empty((1, shape[2]), np.float32)


def ahead(w, mb):
    n, k = w.shape
    rows = min(n, int(mb * 2**20) // k) // 8 * 8
    return w, rows * k


def chain(mode: str, mb: float, smalls: bool = True, spin_cycles: int = spin):
    def launch():
        for _ in range(count):
            for w, x, y, nxt in ((a, xa, ya, b), (b, xb, yb, a)):
                target = ahead(nxt, mb)
                be.launch_gemv(GEMV_CONFIGS[1], w, x[0], x[1], y)
                if smalls:
                    m = {"early": 1, "after": 2, "alone": 2, "lines_early": 3, "lines_after": 4,
                         "lines_alone": 4}.get(mode, 0)
                    be._launcher.launch(small, (132,), (128,), (target[0].q, target[0].d, np.int64(target[1]),
                                                                 np.int32(m), np.int64(spin_cycles)))
    return graph_seconds(cp, launch, repeats) / count * 1e6


results = {"shape": shape, "spin_cycles": spin, "count": count,
           "gemvs_alone_us": round(chain("none", 0, smalls=False), 2),
           "modes": {}}
results["modes"]["none"] = round(chain("none", 0), 2)
results["modes"]["none_no_spin"] = round(chain("none", 0, spin_cycles=0), 2)
for mb in sizes:
    for mode in modes:
        results["modes"][f"{mode}_{mb:g}MB"] = round(chain(mode, mb, spin_cycles=0 if "alone" in mode else spin), 2)
results["modes"]["none_again"] = round(chain("none", 0), 2)
print(json.dumps(results, indent=1))
