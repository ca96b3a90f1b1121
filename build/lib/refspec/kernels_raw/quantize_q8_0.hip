// Activation quantization to Q8_0: the twin of spec.quantize_q8_0 (byte-identical to ggml's reference
// quantizer), alone (quantize_q8_0) and fused with the RMSNorm before it (rmsnorm_q8, the twin of
// spec.quantize_q8_0(spec.rmsnorm(x, w, eps))). One thread quantizes one block of 32 values.
#include "portable.h"
#include "lane_sum.h"

#define RS_QK 32                   // values per Q8_0 block (refspec.model.QK8_0)
#define RS_QUANTIZE_THREADS 128    // threads per block of quantize_q8_0
#define RS_RMSNORM_Q8_THREADS 128  // threads per block of rmsnorm_q8 (one row per block)

// Round half away from zero as the spec writes it: whole + floor(2 * fraction) on the magnitude, the sign put
// back, and 0 where the scaled value is not finite. floorf is exact.
RS_DEVICE int rs_round_q8(float scaled) {
  if (!rs_isfinite(scaled)) return 0;
  const float mag = fabsf(scaled);
  const float whole = floorf(mag);
  const float rounded = rs_add(whole, floorf(rs_mul(rs_sub(mag, whole), 2.0f)));
  return scaled < 0.0f ? -(int)rounded : (int)rounded;
}

// Quantize the 32 values v of one block: d = amax / 127; inv = 0 if d == 0 else 1 / d; q = round(v * inv);
// store the quants (two 16-byte stores) and fp16(d).
RS_DEVICE void rs_quantize_block(const float (&v)[RS_QK], signed char* __restrict__ q, unsigned short* __restrict__ d) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < RS_QK; ++i) amax = rs_max_nan(amax, fabsf(v[i]));  // np.max: exact in any order
  const float scale = rs_div(amax, 127.0f);
  const float inv = scale == 0.0f ? 0.0f : rs_div(1.0f, scale);
  int packed[RS_QK / 4];
#pragma unroll
  for (int i = 0; i < RS_QK / 4; ++i) {
    int word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) word |= (rs_round_q8(rs_mul(v[4 * i + j], inv)) & 0xff) << (8 * j);
    packed[i] = word;
  }
  int4* q4 = (int4*)q;
  q4[0] = make_int4(packed[0], packed[1], packed[2], packed[3]);
  q4[1] = make_int4(packed[4], packed[5], packed[6], packed[7]);
  *d = rs_float_to_half(scale);
}

RS_DEVICE void rs_load_block(const float* __restrict__ p, float (&v)[RS_QK]) {
#pragma unroll
  for (int i = 0; i < RS_QK / 4; ++i) {
    const float4 f = ((const float4*)p)[i];
    v[4 * i] = f.x;
    v[4 * i + 1] = f.y;
    v[4 * i + 2] = f.z;
    v[4 * i + 3] = f.w;
  }
}

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
