// RMSNorm over the last axis: the twin of spec.rmsnorm. One group of 32 threads per row:
//   out = (x * (1 / sqrt(lane_sum(x*x) / n + eps))) * w
#include "portable.h"
#include "lane_sum.h"

#define RS_RMSNORM_THREADS 128  // 4 rows per block

// x float32 [R, heads, n] whose R-rows lie x_stride floats apart and whose heads lie head_stride floats apart
// (a view: qwen35's queries between their gates, keys inside the stacked Q/K/V output; contiguous rows of n
// are heads = 1, head_stride = n, x_stride = n); out float32 [rows = R * heads, n] contiguous; w float32 [n].
// Grid: ceil(rows / 4) blocks.
extern "C" __global__ void __launch_bounds__(RS_RMSNORM_THREADS)
rmsnorm(const float* __restrict__ x, long long x_stride, int heads, long long head_stride,
        const float* __restrict__ w, float eps, int rows, int n, float* __restrict__ out) {
  rs_kernel_begin();
  const long long row = (long long)blockIdx.x * rs_groups() + rs_group();
  if (row >= rows) return;  // the whole group leaves together
  const float* xr = x + (row / heads) * x_stride + (row % heads) * head_stride;
  float acc = 0.0f;  // lane value: +0.0, then x[l]^2, x[l+32]^2, ... in order
#pragma unroll 16  // 16 loads in flight at once: a long row (the hidden state, 4096+) waits for L2 n/512 times, not n/128
  for (int i = rs_lane(); i < n; i += RS_LANES) acc = rs_add(acc, rs_mul(xr[i], xr[i]));
  const float mean = rs_div(rs_lane_tree(acc), (float)n);
  const float inv = rs_div(1.0f, rs_sqrt(rs_add(mean, eps)));
  for (int i = rs_lane(); i < n; i += RS_LANES) out[row * n + i] = rs_mul(rs_mul(xr[i], inv), w[i]);
}
