// Activation quantization to Q8_0: the twin of spec.quantize_q8_0 (byte-identical to ggml's reference
// quantizer), alone (quantize_q8_0) and fused with the RMSNorm before it (rmsnorm_q8, the twin of
// spec.quantize_q8_0(spec.rmsnorm(x, w, eps))) and with the SiLU gate before it (silu_mul_q8, the twin of
// spec.quantize_q8_0(spec.silu_mul(gate, up))). One thread quantizes one block of 32 values.
#include "portable.h"
#include "lane_sum.h"
#include "exp.h"
#include "quantize.h"

#define RS_QUANTIZE_THREADS 128    // threads per block of quantize_q8_0
#define RS_RMSNORM_Q8_THREADS 128  // threads per block of rmsnorm_q8 (one row per block)
#define RS_BATCH 32                // loads per lane issued together by rmsnorm_q8's sum

// x float32 [rows, k] -> xq int8 [rows, k], xd fp16 [rows, k/32]. Grid: ceil(rows * k/32 / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_QUANTIZE_THREADS)
quantize_q8_0(const float* __restrict__ x, int rows, int k, signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  const int nb = k / RS_QK;
  const long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // = row * nb + b
  if (block >= (long long)rows * nb) return;
  float v[RS_QK];
  rs_load_block(x + block * RS_QK, v);
  rs_quantize_block(v, xq + block * RS_QK, xd + block);
}

// RMSNorm then quantization, one row per block of threads: the row's 32 lanes (group 0) compute
// inv = 1 / sqrt(lane_sum(x*x) / n + eps) as spec.rmsnorm does; then every thread takes whole blocks,
// y = (x * inv) * w, and quantizes them. Grid: rows blocks.
extern "C" __global__ void __launch_bounds__(RS_RMSNORM_Q8_THREADS)
rmsnorm_q8(const float* __restrict__ x, const float* __restrict__ w, float eps, int k,
           signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  __shared__ float inv_shared;
  const float* xrow = x + (long long)blockIdx.x * k;
  if (rs_group() == 0) {
    float acc = 0.0f;  // lane value: +0.0, then x[l]^2, x[l+32]^2, ... in order
    for (int i0 = rs_lane(); i0 < k; i0 += RS_LANES * RS_BATCH) {
      float v[RS_BATCH];  // a batch of loads in flight before the additions that need them
#pragma unroll
      for (int j = 0; j < RS_BATCH; ++j) v[j] = i0 + RS_LANES * j < k ? xrow[i0 + RS_LANES * j] : 0.0f;
#pragma unroll
      for (int j = 0; j < RS_BATCH; ++j) {
        if (i0 + RS_LANES * j < k) acc = rs_add(acc, rs_mul(v[j], v[j]));
      }
    }
    const float mean = rs_div(rs_lane_tree(acc), (float)k);
    if (rs_lane() == 0) inv_shared = rs_div(1.0f, rs_sqrt(rs_add(mean, eps)));
  }
  __syncthreads();
  const float inv = inv_shared;
  const int nb = k / RS_QK;
  for (int b = threadIdx.x; b < nb; b += blockDim.x) {
    float v[RS_QK], g[RS_QK];
    rs_load_block(xrow + b * RS_QK, v);
    rs_load_block(w + b * RS_QK, g);
#pragma unroll
    for (int i = 0; i < RS_QK; ++i) v[i] = rs_mul(rs_mul(v[i], inv), g[i]);
    const long long block = (long long)blockIdx.x * nb + b;
    rs_quantize_block(v, xq + block * RS_QK, xd + block);
  }
}

// SiLU(gate) * up, then quantization: lane i of a group of 32 computes value i of one block as spec.silu_mul
// does, (g / (1 + exp(-g))) * u, and the group quantizes the block (rs_quantize_block_lanes). gate and up
// are rows of n values `stride` floats apart (views of the stacked gate/up GEMV output). Needs n % 32 == 0.
// xq int8 [rows, n], xd fp16 [rows, n/32]. Grid: ceil(rows * n/32 / (threads/32)) blocks.
extern "C" __global__ void __launch_bounds__(RS_QUANTIZE_THREADS)
silu_mul_q8(const float* __restrict__ gate, const float* __restrict__ up, long long stride, int rows, int n,
            signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  const int nb = n / RS_QK;
  const long long block = (long long)blockIdx.x * rs_groups() + rs_group();  // = row * nb + b
  if (block >= (long long)rows * nb) return;  // the whole group leaves together
  const long long at = (block / nb) * stride + (block % nb) * RS_QK + rs_lane();
  const float g = gate[at];
  const float v = rs_mul(rs_div(g, rs_add(1.0f, refspec_exp(-g))), up[at]);
  rs_quantize_block_lanes(v, xq + block * RS_QK, xd + block);
}
