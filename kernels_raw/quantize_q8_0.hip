// Activation quantization to Q8_0: the twin of spec.quantize_q8_0 (byte-identical to ggml's reference
// quantizer), alone (quantize_q8_0) and fused with the RMSNorm before it (rmsnorm_q8, the twin of
// spec.quantize_q8_0(spec.rmsnorm(x, w, eps))) and with the SiLU gate before it (silu_mul_q8, the twin of
// spec.quantize_q8_0(spec.silu_mul(gate, up))). One thread quantizes one block of 32 values.
#include "portable.h"
#include "lane_sum.h"
#include "exp.h"
#include "quantize.h"

#define RS_QUANTIZE_THREADS 128    // threads per block of quantize_q8_0
#define RS_RMSNORM_Q8_MAX_THREADS 512  // threads per block of rmsnorm_q8 and rmsnorm_q8_wide, at most
#define RS_RMSNORM_STAGE 16        // 16-byte loads of the row a thread of rmsnorm_q8 has in flight at once

// x float32 [rows, k] -> xq int8 [rows, k], xd fp16 [rows, k/32]. Grid: ceil(rows * k/32 / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_QUANTIZE_THREADS)
quantize_q8_0(const float* __restrict__ x, int rows, int k, signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  rs_kernel_begin();
  const int nb = k / RS_QK;
  const long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // = row * nb + b
  if (block >= (long long)rows * nb) return;
  float v[RS_QK];
  rs_load_block(x + block * RS_QK, v);
  rs_quantize_block(v, xq + block * RS_QK, xd + block);
}

// RMSNorm then quantization. A row's Q8_0 blocks are spread over `parts` thread blocks (block b of the row
// goes to part b % parts), so that one row fills many multiprocessors: each part first stages the whole row
// in shared memory (all threads, the loads in flight together), then the row's 32 lanes (group 0) compute
// inv = 1 / sqrt(lane_sum(x*x) / n + eps) as spec.rmsnorm does, every part the same, and each group takes
// whole blocks, one value per lane, y = (x * inv) * w, and quantizes them together (rs_quantize_blocks_lanes).
// The norm's weights a group needs are loaded before the kernel's wait (rs_rmsnorm_q8_weights: weights are no
// kernel's output), so that they are in registers when the row arrives. rmsnorm_q8 needs k * 4 bytes of
// dynamic shared memory (the wrapper passes them; rows too long for that use rmsnorm_q8_wide, the same
// arithmetic reading global memory). parts * groups * RS_RMSNORM_Q8_PER_GROUP >= k / 32 (groups: of 32 threads
// a block). Grid: rows * parts blocks of a multiple of 32 threads, up to RS_RMSNORM_Q8_MAX_THREADS.
// `live`: only the first live[0] rows, or all where null (rs_live_rows).
#define RS_RMSNORM_Q8_PER_GROUP 4  // Q8_0 blocks per group and part

// This lane's weight in each of its group's blocks of the part.
RS_DEVICE void rs_rmsnorm_q8_weights(const float* __restrict__ w, int k, int part, int parts,
                                     float (&wv)[RS_RMSNORM_Q8_PER_GROUP]) {
  const int nb = k / RS_QK;
#pragma unroll
  for (int j = 0; j < RS_RMSNORM_Q8_PER_GROUP; ++j) {
    const int b = part + parts * (rs_group() + rs_groups() * j);
    wv[j] = b < nb ? w[b * RS_QK + rs_lane()] : 0.0f;
  }
}

RS_DEVICE void rs_rmsnorm_q8_part(const float* __restrict__ xrow, const float (&wv)[RS_RMSNORM_Q8_PER_GROUP],
                                  float eps, int k, int row, int part, int parts, signed char* __restrict__ xq,
                                  unsigned short* __restrict__ xd) {
  __shared__ float inv_shared;
  const int nb = k / RS_QK, lane = rs_lane();
  if (rs_group() == 0) {
    float acc = 0.0f;  // lane value: +0.0, then x[l]^2, x[l+32]^2, ... in order
    int i = lane;
    if (i + 7 * RS_LANES < k) {  // eight values at a time, the next eight read while these are added
      float t[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) t[j] = xrow[i + j * RS_LANES];
      for (; i + 15 * RS_LANES < k; i += 8 * RS_LANES) {
        float next[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) next[j] = xrow[i + (8 + j) * RS_LANES];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          acc = rs_add(acc, rs_mul(t[j], t[j]));
          t[j] = next[j];
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) acc = rs_add(acc, rs_mul(t[j], t[j]));
      i += 8 * RS_LANES;
    }
    for (; i < k; i += RS_LANES) acc = rs_add(acc, rs_mul(xrow[i], xrow[i]));
    const float mean = rs_div(rs_lane_tree(acc), (float)k);
    if (lane == 0) inv_shared = rs_div(1.0f, rs_sqrt(rs_add(mean, eps)));
  }
  __syncthreads();
  const float inv = inv_shared;
  float v[RS_RMSNORM_Q8_PER_GROUP];  // the group's blocks, quantized together
  signed char* q[RS_RMSNORM_Q8_PER_GROUP];
  unsigned short* d[RS_RMSNORM_Q8_PER_GROUP];
  bool here[RS_RMSNORM_Q8_PER_GROUP];
#pragma unroll
  for (int j = 0; j < RS_RMSNORM_Q8_PER_GROUP; ++j) {
    const int b = part + parts * (rs_group() + rs_groups() * j);
    const long long block = (long long)row * nb + b;
    here[j] = b < nb;  // the same for the whole group
    v[j] = here[j] ? rs_mul(rs_mul(xrow[b * RS_QK + lane], inv), wv[j]) : 0.0f;
    q[j] = xq + block * RS_QK;
    d[j] = xd + block;
  }
  rs_quantize_blocks_lanes<RS_RMSNORM_Q8_PER_GROUP>(v, q, d, here);
}

extern "C" __global__ void __launch_bounds__(RS_RMSNORM_Q8_MAX_THREADS)
rmsnorm_q8(const float* __restrict__ x, const float* __restrict__ w, float eps, int k, int parts,
           signed char* __restrict__ xq, unsigned short* __restrict__ xd, const int* __restrict__ live) {
  extern __shared__ float4 rs_row4[];  // the row, k floats
  const int row = blockIdx.x / parts, part = blockIdx.x % parts;
  if (row >= rs_live_rows(live, gridDim.x / parts)) return;  // the whole block
  float wv[RS_RMSNORM_Q8_PER_GROUP];
  rs_rmsnorm_q8_weights(w, k, part, parts, wv);
  rs_kernel_begin();
  const float4* xrow4 = (const float4*)(x + (long long)row * k);
  const int n4 = k / 4;
  for (int first = threadIdx.x; first < n4; first += RS_RMSNORM_STAGE * blockDim.x) {
    // all of a thread's loads are issued before its first store (a loop that stores each value as it comes,
    // with a test of the row's end before the next load, waits for the L2 cache once a load, in turn)
    float4 v[RS_RMSNORM_STAGE];
#pragma unroll
    for (int j = 0; j < RS_RMSNORM_STAGE; ++j) {
      if (first + j * (int)blockDim.x < n4) v[j] = xrow4[first + j * blockDim.x];
    }
#pragma unroll
    for (int j = 0; j < RS_RMSNORM_STAGE; ++j) {
      if (first + j * (int)blockDim.x < n4) rs_row4[first + j * blockDim.x] = v[j];
    }
  }
  __syncthreads();
  rs_rmsnorm_q8_part((const float*)rs_row4, wv, eps, k, row, part, parts, xq, xd);
}

extern "C" __global__ void __launch_bounds__(RS_RMSNORM_Q8_MAX_THREADS)
rmsnorm_q8_wide(const float* __restrict__ x, const float* __restrict__ w, float eps, int k, int parts,
                signed char* __restrict__ xq, unsigned short* __restrict__ xd, const int* __restrict__ live) {
  const int row = blockIdx.x / parts, part = blockIdx.x % parts;
  if (row >= rs_live_rows(live, gridDim.x / parts)) return;  // the whole block
  float wv[RS_RMSNORM_Q8_PER_GROUP];
  rs_rmsnorm_q8_weights(w, k, part, parts, wv);
  rs_kernel_begin();
  rs_rmsnorm_q8_part(x + (long long)row * k, wv, eps, k, row, part, parts, xq, xd);
}

// SiLU(gate) * up, then quantization: lane i of a group of 32 computes value i of one block as spec.silu_mul
// does, (g / (1 + exp(-g))) * u, and the group quantizes the block (rs_quantize_block_lanes). gate and up
// are rows of n values `stride` floats apart (views of the stacked gate/up GEMV output). Needs n % 32 == 0.
// xq int8 [rows, n], xd fp16 [rows, n/32]. Grid: (rows, ceil(n/32 / (threads/32))) blocks of up to
// RS_SILU_Q8_MAX_THREADS threads: block (row, y) takes blocks y*groups .. y*groups+groups-1 of the row, one a
// group. The backend launches 512 threads a block (refspec.gpu.SILU_Q8_THREADS): the gate/up GEMV before it fills
// the multiprocessors, so its blocks start as that GEMV's leave, and fewer of them start sooner.
// `live`: only the first live[0] rows, or all where null (rs_live_rows).
#define RS_SILU_Q8_MAX_THREADS 1024
extern "C" __global__ void __launch_bounds__(RS_SILU_Q8_MAX_THREADS)
silu_mul_q8(const float* __restrict__ gate, const float* __restrict__ up, long long stride, int rows, int n,
            signed char* __restrict__ xq, unsigned short* __restrict__ xd, const int* __restrict__ live) {
  const int row = blockIdx.x;
  if (row >= rs_live_rows(live, rows)) return;  // the whole block
  rs_kernel_begin_early();
  const int nb = n / RS_QK, b = blockIdx.y * rs_groups() + rs_group();
  if (b >= nb) return;  // the whole group leaves together
  const long long at = row * stride + b * RS_QK + rs_lane();
  const float v = rs_silu_mul(gate[at], up[at]);
  const long long block = (long long)row * nb + b;
  rs_quantize_block_lanes(v, xq + block * RS_QK, xd + block);
}
