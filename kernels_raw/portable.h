// The subset of CUDA and HIP that refspec's kernels are written in (refspec/SPEC.md, "GPU kernels").
//
// Every kernel includes this header and uses only what it defines for arithmetic that affects results:
//   rs_add rs_sub rs_mul rs_div rs_sqrt  binary32 + - * / sqrt, each rounded to nearest even on its own: never
//                                        fused into an FMA, never approximated, subnormals kept
//   rs_dot4                              exact int8x4 dot product plus an int32 (dp4a / v_dot4_i32_i8)
//   rs_half_to_float rs_float_to_half    IEEE binary16 <-> binary32, round to nearest even
//   rs_shfl_xor                          exchange within a group of 32 lanes
// Compile with contraction off as well (NVRTC --fmad=false, hipcc/hiprtc -ffp-contract=off): the pragma
// below covers HIP, and CUDA's __f*_rn intrinsics are never contracted.
//
// Lanes. The spec reduces over 32 lanes whatever the hardware. A kernel works in groups of 32 consecutive
// threads (rs_lane(), rs_group()): a CUDA warp, or one half of a 64-wide AMD wavefront. rs_shfl_xor with an
// offset below 32 never leaves its group, so both halves of a wavefront reduce independently, in the spec's
// order. Block sizes are multiples of 64 so that no wavefront is shared by two blocks' worth of groups.
#pragma once

#if defined(__HIP__) || defined(__HIPCC_RTC__)
#define RS_HIP 1
#include <hip/hip_runtime.h>  // hiprtc has this header built in
#pragma clang fp contract(off)
#endif

#define RS_DEVICE static __device__ __forceinline__
#define RS_MEMBER __device__ __forceinline__  // member functions of device-side structs
#define RS_LANES 32  // spec.LANES

RS_DEVICE int rs_lane() { return threadIdx.x & (RS_LANES - 1); }
RS_DEVICE int rs_group() { return threadIdx.x / RS_LANES; }
RS_DEVICE int rs_groups() { return blockDim.x / RS_LANES; }

// ------------------------------------------------------------------------------------------ bit casts
RS_DEVICE float rs_as_float(int i) { return __int_as_float(i); }
RS_DEVICE int rs_as_int(float f) { return __float_as_int(f); }
RS_DEVICE bool rs_isnan(float f) { return f != f; }
RS_DEVICE bool rs_isfinite(float f) { return (rs_as_int(f) & 0x7f800000) != 0x7f800000; }

// ------------------------------------------------------------------------------- binary32 arithmetic
#if defined(RS_HIP)
RS_DEVICE float rs_add(float a, float b) { return a + b; }
RS_DEVICE float rs_sub(float a, float b) { return a - b; }
RS_DEVICE float rs_mul(float a, float b) { return a * b; }
// Correctly rounded: clang's HIP default (-fhip-fp32-correctly-rounded-divide-sqrt, passed explicitly too).
RS_DEVICE float rs_div(float a, float b) { return a / b; }
#else
RS_DEVICE float rs_add(float a, float b) { return __fadd_rn(a, b); }
RS_DEVICE float rs_sub(float a, float b) { return __fsub_rn(a, b); }
RS_DEVICE float rs_mul(float a, float b) { return __fmul_rn(a, b); }
RS_DEVICE float rs_div(float a, float b) { return __fdiv_rn(a, b); }
#endif

// sqrt rounded to nearest from any estimate s within a few ulp of sqrt(x), for finite x > 0 that is not
// tiny (x >= 2**-100): the midpoints between s and its neighbours have at most 26 significant bits, so their
// squares are exact in binary64 and comparing them with x decides the rounding exactly.
RS_DEVICE float rs_sqrt_round(float x, float s) {
  const double xd = x;
  for (int step = 0; step < 4; ++step) {
    const float up = rs_as_float(rs_as_int(s) + 1), down = rs_as_float(rs_as_int(s) - 1);
    const double hi = ((double)s + (double)up) * 0.5, lo = ((double)s + (double)down) * 0.5;
    if (hi * hi <= xd) {
      s = up;  // x == hi*hi is impossible (hi needs 25 bits; x has 24)
    } else if (lo * lo >= xd) {
      s = down;
    } else {
      break;
    }
  }
  return s;
}

#if defined(RS_HIP)
// HIP's __fsqrt_rn is the hardware approximation on some ROCm releases: round its result exactly instead.
RS_DEVICE float rs_sqrt(float x) {
  if (!(x > 0.0f) || !rs_isfinite(x)) return __builtin_sqrtf(x);  // +-0, negative, inf, NaN: IEEE results
  if (x < 0x1p-100f) return rs_mul(rs_sqrt_round(rs_mul(x, 0x1p64f), __builtin_sqrtf(rs_mul(x, 0x1p64f))), 0x1p-32f);
  return rs_sqrt_round(x, __builtin_sqrtf(x));
}
#else
RS_DEVICE float rs_sqrt(float x) { return __fsqrt_rn(x); }
#endif

// ----------------------------------------------------------------------------------- binary16 scales
#if defined(RS_HIP)
RS_DEVICE float rs_half_to_float(unsigned short h) { return (float)__builtin_bit_cast(_Float16, h); }
RS_DEVICE unsigned short rs_float_to_half(float f) { return __builtin_bit_cast(unsigned short, (_Float16)f); }
#else
RS_DEVICE float rs_half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
RS_DEVICE unsigned short rs_float_to_half(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#endif

// ------------------------------------------------------------------------------- int8 dot products
// c + a.x*b.x + a.y*b.y + a.z*b.z + a.w*b.w over the four signed bytes of a and b, exact in int32.
#if defined(RS_HIP)
RS_DEVICE int rs_dot4(int a, int b, int c) { return __builtin_amdgcn_sdot4(a, b, c, false); }
#else
RS_DEVICE int rs_dot4(int a, int b, int c) { return __dp4a(a, b, c); }
#endif

// rs_opaque(x) == x, but the compiler may not look through it: it keeps a lane-dependent choice between two
// register values from becoming a lane-dependent index into a register array (clang for AMD GPUs otherwise
// turns "c ? v[i] : v[j]" into a load from v[c ? i : j], which puts v in scratch memory).
#if defined(RS_HIP)
RS_DEVICE float rs_opaque(float x) {
  asm volatile("" : "+v"(x));
  return x;
}
#else
RS_DEVICE float rs_opaque(float x) { return x; }
#endif

// ---------------------------------------------------------------------------------- lane exchange
#if defined(RS_HIP)
RS_DEVICE float rs_shfl_xor(float v, int offset) { return __shfl_xor(v, offset, RS_LANES); }
RS_DEVICE int rs_shfl_xor(int v, int offset) { return __shfl_xor(v, offset, RS_LANES); }
#else
RS_DEVICE float rs_shfl_xor(float v, int offset) { return __shfl_xor_sync(0xffffffffu, v, offset, RS_LANES); }
RS_DEVICE int rs_shfl_xor(int v, int offset) { return __shfl_xor_sync(0xffffffffu, v, offset, RS_LANES); }
#endif

// ------------------------------------------------------------------- overlapping kernel boundaries
// Programmatic dependent launch (NVIDIA sm_90+; GpuBackend launches every kernel with it there). A kernel
// may then start while the kernel before it in the stream is still running, so its launch and ramp hide
// behind the other's tail. Every kernel calls rs_kernel_begin() before it reads anything an earlier kernel
// wrote or writes anything at all: it waits until every earlier kernel has finished and its writes are
// visible (a kernel launched without the attribute, or on HIP, finds nothing to wait for), then lets the
// next kernel start. Before it, a kernel may only read what no kernel writes: the GEMV loads its first
// weight blocks while the kernel before it still runs. Scheduling only: no bit changes.
RS_DEVICE void rs_kernel_begin() {
#if !defined(RS_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// rs_kernel_begin with the next kernel let go first: it may start as soon as every block of this one has
// started, not once they have all waited. silu_mul_q8 (between two GEMVs: the down projection's GEMV then loads its
// first weights while the SiLU still waits for the gate/up GEMV) and rope_kv (attention then asks for the older
// keys and values sooner) begin so; the other kernels measured slower so, or no faster (whole passes,
// tests/results/early_launch_2026_12_04_h200.json). Scheduling only: the wait and every bit are the same.
RS_DEVICE void rs_kernel_begin_early() {
#if !defined(RS_HIP) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The rows a launch computes: all `rows`, or, where `live` is not null, the first live[0] of them (0: none).
// A chained speculative pass (refspec/gpu_graphs.py) has draft_max+1 rows whatever its drafter guessed; the
// step before it writes live[0] = guesses + 1, and its kernels skip the rows past them, which nothing reads.
// A pass or greedy step queued past a run's end gets 0 (speculative_next, greedy_next).
// Each row's own operations are the same either way. Read before rs_kernel_begin (a load after it would put
// its latency on every kernel's path): no kernel of a pass writes it, and the step that does ends the graph
// replay before the pass's, which the stream completes before any of this one's kernels starts.
RS_DEVICE int rs_live_rows(const int* live, int rows) {
  if (live == nullptr) return rows;
  const int n = live[0];
  return n < 0 ? 0 : n < rows ? n : rows;
}

// A hint that the 128-byte line holding p will be read soon: NVIDIA fetches it into the L2 cache (every
// multiprocessor reads through L2, so the line can never be stale); a no-op on HIP. No value is read.
RS_DEVICE void rs_prefetch_l2(const void* p) {
#if !defined(RS_HIP) && defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

// A load of what another block of the same kernel wrote before a __threadfence() and an atomic that this block
// has seen: from the L2 cache, past this multiprocessor's L1 (which may hold an older copy of the line).
RS_DEVICE float rs_load_coherent(const float* p) { return *(const volatile float*)p; }
