// KV cache write (refspec.backends.CpuBackend.kv_write): cache[g, pos[0] + r, :] = k[r, g, :], same for v
// (the first position read from device memory).
#include "portable.h"

#define RS_KV_WRITE_THREADS 256

// k_cache, v_cache float32 [kv_heads, n_pos, dim]; k, v float32 [rows, kv_heads, dim]; pos int32 [1].
// Grid: ceil(rows * kv_heads * dim / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_KV_WRITE_THREADS)
kv_write(float* __restrict__ k_cache, float* __restrict__ v_cache, const float* __restrict__ k,
         const float* __restrict__ v, const int* __restrict__ pos, int rows, int kv_heads, int dim, int n_pos) {
  rs_kernel_begin();
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // index into k and v
  if (e >= (long long)rows * kv_heads * dim) return;
  const int d = (int)(e % dim);
  const int g = (int)((e / dim) % kv_heads);
  const int r = (int)(e / ((long long)dim * kv_heads));
  const long long c = ((long long)g * n_pos + pos[0] + r) * dim + d;
  k_cache[c] = k[e];
  v_cache[c] = v[e];
}
