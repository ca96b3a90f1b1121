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
    for (int i = rs_lane(); i < k; i += RS_LANES) acc = rs_add(acc, rs_mul(xrow[i], xrow[i]));
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

// SiLU(gate) * up, then quantization: each thread computes one block of 32 values as spec.silu_mul does,
// (g / (1 + exp(-g))) * u, and quantizes it. gate and up are rows of n values `stride` floats apart (views of
// the stacked gate/up GEMV output). Needs n % 32 == 0, stride % 4 == 0 and 16-byte aligned rows (the
// wrapper checks). xq int8 [rows, n], xd fp16 [rows, n/32]. Grid: ceil(rows * n/32 / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_QUANTIZE_THREADS)
silu_mul_q8(const float* __restrict__ gate, const float* __restrict__ up, long long stride, int rows, int n,
            signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  const int nb = n / RS_QK;
  const long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // = row * nb + b
  if (block >= (long long)rows * nb) return;
  const long long offset = (block / nb) * stride + (block % nb) * RS_QK;
  float g[RS_QK], u[RS_QK];
  rs_load_block(gate + offset, g);
  rs_load_block(up + offset, u);
#pragma unroll
  for (int i = 0; i < RS_QK; ++i) g[i] = rs_mul(rs_div(g[i], rs_add(1.0f, refspec_exp(-g[i]))), u[i]);
  rs_quantize_block(g, xq + block * RS_QK, xd + block);
}
