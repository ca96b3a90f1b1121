"""What does a boundary between two dependent phases of a decode pass cost, as kernels and inside one persistent
kernel (device machine; a tool, not a test)? The question behind a persistent multi-op kernel: a one-row llama-8b
pass reads its weights at 83 % of the read ceiling with the small kernels left out and at 72 % with them, and no
boundary fusion tried so far has paid (docs/gpu-performance-log.md).

A chain of COUNT pairs of phases, each phase a streaming read of a matrix-sized buffer (by default the sizes of
llama-8b's down projection and its Q/K/V, 62.4 and 26.7 MB; four buffers in turn, so that the L2 cache holds none
of them when it is read again), each block of the grid reading one contiguous share with 2 x 4 16-byte loads in
flight a thread, then a dependency: the next phase may start only once every block has finished (as a GEMV's
output feeds the next small kernel), optionally through a "small op" (one block that reads every block's result and
spins SPIN cycles, as an RMSNorm would work) that the next phase waits for in turn. Ways to run it:

    k_read          one kernel a phase (launches overlapped as in a pass: the next kernel's first loads go out
                    before its griddepcontrol.wait)
    k_read_small    the same with the small op as a kernel of one block between phases
    k_gemv_small    refspec's own one-row GEMVs over matrices of those sizes, the small op between them (the pass's
                    pattern, for scale)
    p_stream        one persistent kernel, no dependency at all: every block reads its shares of all phases in turn
                    (the ideal: what streaming alone costs)
    p_bar           one persistent kernel, a grid barrier after each phase (an atomic count and a released
                    generation number)
    p_bar_small     the same, the small op by block 0 after the barrier, then a second barrier
    p_bar_ahead, p_bar_small_ahead: the same with each block's first loads of the next phase issued before the
                    barriers (weights are nobody's output)
    k_deep_D_P      k_read with D rounds of loads in flight a thread (k_read's registers let it keep one), the first P
                    of them requested before the wait; with _small, the small op between
    k_gemvlike      the one-row GEMV's weight reads alone (its grid, two rows a warp, 32 bytes a lane a round, one
                    round ahead), no arithmetic; _coalesced: each load a whole 512-byte run; _tiled: the matrix
                    stored so that a block's 8 rows are read as one contiguous run a round; _512: blocks of 16 warps
    k_deep_2_1_128  k_deep_2_1 in blocks of 128 threads (four times the blocks), as the GEMV's

WAYS=name,name,... runs only those.

    python3 tests/probe_grid_barrier.py [MB_A,MB_B] [SPIN] [COUNT] [REPEATS] [BLOCKS_PER_SM]

Prints JSON: us per phase for each way, and the read ceiling's time for the same bytes.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from refspec.bench_gemv import _Timer, read_bandwidth
from refspec.gpu import COMPILE_OPTIONS, GpuBackend, GpuQ8, kernel_dir
from refspec.gpu_launch import Kernel

from graph_timing import graph_seconds

sizes_mb = [float(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "62.39,26.74").split(",")]
spin = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
count = int(sys.argv[3]) if len(sys.argv) > 3 else 10
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 20
per_sm = int(sys.argv[5]) if len(sys.argv) > 5 else 2

SOURCE = (kernel_dir() / "portable.h").read_text() + r'''
#define T 512
#define INFLIGHT 4

static __device__ void share(long long n16, long long& begin, long long& end) {
  const long long per = (n16 + gridDim.x - 1) / gridDim.x;
  begin = blockIdx.x * per;
  end = begin + per < n16 ? begin + per : n16;
}

static __device__ void first_loads(const int4* p, long long n16, int4 (&v)[INFLIGHT]) {
  long long begin, end;
  share(n16, begin, end);
#pragma unroll
  for (int u = 0; u < INFLIGHT; ++u) {
    const long long i = begin + threadIdx.x + u * T;
    v[u] = i < end ? p[i] : make_int4(0, 0, 0, 0);
  }
}

// The rest of the block's share, INFLIGHT loads of the next round in flight while this round is folded; the
// block's fold (xor) to out[blockIdx.x].
static __device__ void read_rest(const int4* p, long long n16, int4 (&v)[INFLIGHT], int* out) {
  __shared__ int folded;
  long long begin, end;
  share(n16, begin, end);
  if (threadIdx.x == 0) folded = 0;
  int acc = 0;
  for (long long i0 = begin + threadIdx.x; i0 < end; i0 += INFLIGHT * T) {
    int4 next[INFLIGHT];
#pragma unroll
    for (int u = 0; u < INFLIGHT; ++u) {
      const long long j = i0 + (INFLIGHT + u) * T;
      next[u] = j < end ? p[j] : make_int4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < INFLIGHT; ++u) {
      acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
      v[u] = next[u];
    }
  }
  __syncthreads();
  atomicXor(&folded, acc);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = folded;
}

static __device__ void small_op(const int* out, int n, int* res, long long spin) {
  __shared__ int folded;
  if (threadIdx.x == 0) folded = 0;
  __syncthreads();
  int acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc ^= ((volatile const int*)out)[i];
  atomicXor(&folded, acc);
  if (threadIdx.x == 0) {
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) res[0] = folded;
}

static __device__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// bar[0]: blocks arrived; bar[1]: the generation released. gen: this block's count of barriers passed.
static __device__ void grid_sync(unsigned* bar, unsigned& gen) {
  __syncthreads();
  if (threadIdx.x == 0) {
    ++gen;
    __threadfence();
    if (atomicAdd(&bar[0], 1u) == gridDim.x - 1) {
      atomicExch(&bar[0], 0u);
      __threadfence();
      atomicExch(&bar[1], gen);
    } else {
      while ((int)(load_acquire(&bar[1]) - gen) < 0) {
      }
    }
  }
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(T) k_read(const int4* p, long long n16, int* out) {
  int4 v[INFLIGHT];
  first_loads(p, n16, v);
  rs_kernel_begin();
  read_rest(p, n16, v, out);
}

// The same read with DEPTH rounds of INFLIGHT loads in flight a thread, the first PRE of them requested before the
// wait (the rest after it): does the depth requested before the wait matter, beyond the depth in flight?
template <int DEPTH, int PRE>
static __device__ void read_deep(const int4* p, long long n16, int* out) {
  __shared__ int folded;
  long long begin, end;
  share(n16, begin, end);
  int4 ring[DEPTH][INFLIGHT];
  const int threads = blockDim.x;  // (T, or fewer: the probe's block-size variants)
  const long long round = INFLIGHT * threads;
#pragma unroll
  for (int d = 0; d < PRE; ++d) {
#pragma unroll
    for (int u = 0; u < INFLIGHT; ++u) {
      const long long i = begin + threadIdx.x + d * round + u * threads;
      ring[d][u] = i < end ? p[i] : make_int4(0, 0, 0, 0);
    }
  }
  rs_kernel_begin();
#pragma unroll
  for (int d = PRE; d < DEPTH; ++d) {
#pragma unroll
    for (int u = 0; u < INFLIGHT; ++u) {
      const long long i = begin + threadIdx.x + d * round + u * threads;
      ring[d][u] = i < end ? p[i] : make_int4(0, 0, 0, 0);
    }
  }
  if (threadIdx.x == 0) folded = 0;
  int acc = 0;
  for (long long i0 = begin + threadIdx.x; i0 < end; i0 += DEPTH * round) {
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
#pragma unroll
      for (int u = 0; u < INFLIGHT; ++u) {
        acc ^= ring[d][u].x ^ ring[d][u].y ^ ring[d][u].z ^ ring[d][u].w;
        const long long j = i0 + (DEPTH + d) * round + u * threads;
        ring[d][u] = j < end ? p[j] : make_int4(0, 0, 0, 0);
      }
    }
  }
  __syncthreads();
  atomicXor(&folded, acc);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = folded;
}
extern "C" __global__ void __launch_bounds__(T) k_deep_2_1(const int4* p, long long n16, int* out) { read_deep<2, 1>(p, n16, out); }
extern "C" __global__ void __launch_bounds__(T) k_deep_2_2(const int4* p, long long n16, int* out) { read_deep<2, 2>(p, n16, out); }

// The one-row GEMV's weight reads alone (kernels_raw/q8_gemv.hip, q8_gemv<1, 2, 1, 1>): blocks of 4 warps, each warp
// two rows of `k` bytes, lane l of round j reading the 32 bytes at 1024 j + 32 l of each (two 16-byte loads, half
// of each 32-byte sector apiece), the next round requested as this one is folded. COALESCED: the same bytes of a
// round read as 16 l and 512 + 16 l (each load a whole 512-byte run), as a lane map other than the spec's would.
// TILED: the same reads of a matrix stored tile by tile, a block's 8 rows round-major (round j of its row r at
// 8 KiB j + 1 KiB r of the block's 8 k bytes): each round of a block one contiguous 8 KiB run.
template <bool COALESCED, bool TILED = false>
static __device__ void read_gemvlike(const int4* p, long long n16, int k, int* out) {
  const long long rows = n16 * 16 / k;
  const long long row0 = ((long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * 2;
  const int lane = threadIdx.x % 32;
  const char* base = (const char*)p;
  const int o0 = COALESCED ? 16 * lane : 32 * lane, o1 = COALESCED ? 512 + 16 * lane : 32 * lane + 16;
  int4 w[2][2];
  const long long r0 = row0 < rows ? row0 : rows - 1, r1 = row0 + 1 < rows ? row0 + 1 : rows - 1;
  if (TILED) {  // the rows' first round where the tiled layout keeps it; round j lies 8 KiB j further on
    base += (r0 / 8) * 8LL * k + (r0 % 8) * 1024LL - r0 * (long long)k;
  }
  const int step = TILED ? 8 : 1;  // a round's distance, in rounds of one row
  w[0][0] = *(const int4*)(base + r0 * k + o0);
  w[0][1] = *(const int4*)(base + r0 * k + o1);
  const long long a1 = TILED ? r0 * k + 1024 : r1 * k;  // the second row
  w[1][0] = *(const int4*)(base + a1 + o0);
  w[1][1] = *(const int4*)(base + a1 + o1);
  rs_kernel_begin();
  int acc = 0;
  for (int j = 1024; j <= k; j += 1024) {
    int4 next[2][2];
    if (j < k) {
      next[0][0] = *(const int4*)(base + r0 * k + (long long)j * step + o0);
      next[0][1] = *(const int4*)(base + r0 * k + (long long)j * step + o1);
      next[1][0] = *(const int4*)(base + a1 + (long long)j * step + o0);
      next[1][1] = *(const int4*)(base + a1 + (long long)j * step + o1);
    }
#pragma unroll
    for (int a = 0; a < 2; ++a) {
#pragma unroll
      for (int b = 0; b < 2; ++b) acc ^= w[a][b].x ^ w[a][b].y ^ w[a][b].z ^ w[a][b].w;
    }
    if (j < k) {
#pragma unroll
      for (int a = 0; a < 2; ++a) {
#pragma unroll
        for (int b = 0; b < 2; ++b) w[a][b] = next[a][b];
      }
    }
  }
  if (acc == 0x7e57ab1e) out[blockIdx.x] = acc;
}
extern "C" __global__ void __launch_bounds__(512) k_gemvlike(const int4* p, long long n16, int k, int* out) { read_gemvlike<false>(p, n16, k, out); }
extern "C" __global__ void __launch_bounds__(128) k_gemvlike_tiled(const int4* p, long long n16, int k, int* out) { read_gemvlike<false, true>(p, n16, k, out); }
extern "C" __global__ void __launch_bounds__(128) k_gemvlike_coalesced(const int4* p, long long n16, int k, int* out) { read_gemvlike<true>(p, n16, k, out); }

extern "C" __global__ void k_small(const int* out, int n, int* res, long long spin) {
  rs_kernel_begin();
  small_op(out, n, res, spin);
}

// mode: 1 a barrier after each phase; 2 the small op and a second barrier (with 1); 4 the next phase's first
// loads before the barriers. bufs: `phases` buffers of n16[i] units, read in turn, `rounds` times.
extern "C" __global__ void __launch_bounds__(T) persistent(const int4* const* bufs, const long long* n16, int phases,
                                                          int rounds, int* out, int* res, unsigned* bar, int mode,
                                                          long long spin) {
  rs_kernel_begin();
  unsigned gen = load_acquire(&bar[1]);  // every block reads it before any barrier can complete
  int4 v[INFLIGHT];
  if (mode & 4) first_loads(bufs[0], n16[0], v);
  for (int step = 0; step < phases * rounds; ++step) {
    const int i = step % phases, next = (step + 1) % phases;
    if (!(mode & 4)) first_loads(bufs[i], n16[i], v);
    read_rest(bufs[i], n16[i], v, out + step % 2 * gridDim.x);
    if ((mode & 4) && step + 1 < phases * rounds) first_loads(bufs[next], n16[next], v);
    if (mode & 1) grid_sync(bar, gen);
    if (mode & 2) {
      if (blockIdx.x == 0) small_op(out + step % 2 * gridDim.x, gridDim.x, res, spin);
      grid_sync(bar, gen);
    }
  }
}
'''

be = GpuBackend()
cp = be.cp
from cupy.cuda import compiler  # noqa: E402

binary, _ = compiler.compile_using_nvrtc(SOURCE, COMPILE_OPTIONS["cuda"], filename="probe_grid_barrier.cu")
module = cp.cuda.function.Module()
module.load(binary)
k_read, k_small, persistent = (module.get_function(n) for n in ("k_read", "k_small", "persistent"))
deep = {n: module.get_function(n) for n in ("k_deep_2_1", "k_deep_2_2")}
like = [module.get_function(n) for n in ("k_gemvlike", "k_gemvlike_coalesced", "k_gemvlike_tiled")]
sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]
fits = Kernel(persistent, be).resident_blocks(512, 0)
grid = sms * min(per_sm, fits)

units = [int(mb * 1e6) // 16 for mb in sizes_mb]
bufs = [cp.ones(n * 4, np.int32).view(np.int32) for n in units for _ in range(2)]  # A, A', B, B'
order = [0, 2, 1, 3]  # A B A' B': four buffers of 2 * (A + B) bytes, none read again while the L2 cache holds it
phase_bufs = [bufs[i] for i in order]
phase_units = [units[i // 2] for i in order]
ptrs = cp.asarray(np.array([b.data.ptr for b in phase_bufs], np.uint64))
lens = cp.asarray(np.array(phase_units, np.int64))
out = cp.zeros(2 * grid, np.int32)
res = cp.zeros(4, np.int32)
bar = cp.zeros(2, np.uint32)
phases = len(phase_bufs)
steps = count * 2  # phases timed: count pairs


def per_phase(launch) -> float:
    return graph_seconds(cp, launch, repeats) / steps * 1e6


def kernels(small: bool, spin_cycles: int = spin, fn=None, threads: int = 512):
    fn = fn or k_read

    def launch():
        for step in range(steps):
            be._launcher.launch(fn, (grid * 512 // threads,), (threads,), (phase_bufs[step % phases], np.int64(phase_units[step % phases]),
                                                          out))
            if small:
                be._launcher.launch(k_small, (1,), (128,), (out, np.int32(grid), res, np.int64(spin_cycles)))
    return per_phase(launch)


row_bytes = [14336, 4096]  # the rows of the default sizes' matrices (llama-8b's down projection, its Q/K/V)


def gemvlike(fn, threads: int = 128):
    def launch():
        for step in range(steps):
            i = order[step % phases] // 2
            rows = phase_units[step % phases] * 16 // row_bytes[i]
            be._launcher.launch(fn, (-(-rows // (threads // 16)),), (threads,), (phase_bufs[step % phases],
                                                               np.int64(phase_units[step % phases]),
                                                               np.int32(row_bytes[i]), out))
    return per_phase(launch)


def persistent_run(mode: int, spin_cycles: int = spin):
    def launch():
        be._launcher.launch(persistent, (grid,), (512,), (ptrs, lens, np.int32(phases), np.int32(steps // phases),
                                                          out, res, bar, np.int32(mode), np.int64(spin_cycles)))
    return per_phase(launch)


rng = np.random.default_rng(0)
gemv_shapes = [(4096, 14336), (6144, 4096)]  # the default sizes' matrices
mats = [GpuQ8(q=cp.asarray(rng.integers(-127, 128, (n, k), dtype=np.int8)),
              d=cp.asarray(rng.uniform(0.001, 0.01, (n, k // 32)).astype(np.float16)))
        for n, k in gemv_shapes for _ in range(2)]
gemv_order = [mats[i] for i in order]
xs = {k: (cp.asarray(rng.integers(-127, 128, (1, k), dtype=np.int8)), cp.ones((1, k // 32), np.float16))
      for _, k in gemv_shapes}
ys = {n: cp.empty((1, n), np.float32) for n, _ in gemv_shapes}


def gemvs(small: bool, spin_cycles: int = spin):
    def launch():
        for step in range(steps):
            w = gemv_order[step % phases]
            n, k = w.q.shape
            be.launch_gemv(be.gemv_config(1, k, n), w, xs[k][0], xs[k][1], ys[n])
            if small:
                be._launcher.launch(k_small, (1,), (128,), (out, np.int32(grid), res, np.int64(spin_cycles)))
    return per_phase(launch)


ceiling = read_bandwidth(be, _Timer(cp, 20))
mean_bytes = 16 * sum(units) / len(units)
report = {"sizes_MB": sizes_mb, "spin_cycles": spin, "pairs": count, "grid": grid, "blocks_per_sm": grid // sms,
          "read_ceiling_GBps": round(ceiling / 1e9, 1),
          "ceiling_us_per_phase": round(mean_bytes / ceiling * 1e6, 2), "us_per_phase": {}}
ways = {
    "p_stream": lambda: persistent_run(0),
    "k_read": lambda: kernels(False),
    "p_bar": lambda: persistent_run(1),
    "p_bar_ahead": lambda: persistent_run(5),
    "k_read_small": lambda: kernels(True),
    "k_read_small_nospin": lambda: kernels(True, 0),
    "p_bar_small": lambda: persistent_run(3),
    "p_bar_small_ahead": lambda: persistent_run(7),
    "p_bar_small_ahead_nospin": lambda: persistent_run(7, 0),
    "k_deep_2_1_small": lambda: kernels(True, fn=deep["k_deep_2_1"]),
    "k_deep_2_2_small": lambda: kernels(True, fn=deep["k_deep_2_2"]),
    "k_deep_2_1": lambda: kernels(False, fn=deep["k_deep_2_1"]),
    "k_deep_2_2": lambda: kernels(False, fn=deep["k_deep_2_2"]),
    "k_gemvlike": lambda: gemvlike(like[0]),
    "k_gemvlike_coalesced": lambda: gemvlike(like[1]),
    "k_gemvlike_tiled": lambda: gemvlike(like[2]),
    "k_gemvlike_512": lambda: gemvlike(like[0], 512),
    "k_deep_2_1_128": lambda: kernels(False, fn=deep["k_deep_2_1"], threads=128),
    "k_gemv": lambda: gemvs(False),
    "k_gemv_small": lambda: gemvs(True),
}
only = [w for w in os.environ.get("WAYS", "").split(",") if w]
for rnd in (1, 2):  # twice, in turn
    for name, run in ways.items():
        if only and name not in only:
            continue
        report["us_per_phase"].setdefault(name, []).append(round(run(), 2))
print(json.dumps(report, indent=1))
