// Q8_0 quantization of one block of 32 float32 values (spec.quantize_q8_0), shared by the kernels that
// quantize what they compute: quantize_q8_0.hip (alone, after RMSNorm, after SiLU*up) and attention.hip.
#pragma once
#include "portable.h"
#include "lane_sum.h"

#define RS_QK 32  // values per Q8_0 block (refspec.model.QK8_0)

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


// The same quantization with one block spread over a group of 32 lanes, lane i holding value i: amax by a
// butterfly of rs_max_nan (max is exact in any order), then each lane rounds its own value. Same bits as
// rs_quantize_block; 32 times less work per thread, for kernels whose blocks are too few to fill the GPU.
// COUNT blocks at once, block j's values in v[j], stored at q[j] and d[j] where store[j] (the same for the
// whole group): their butterflies and divisions are independent and interleave, so a group quantizes COUNT
// blocks in about the time of one.
template <int COUNT>
RS_DEVICE void rs_quantize_blocks_lanes(const float (&v)[COUNT], signed char* const (&q)[COUNT],
                                        unsigned short* const (&d)[COUNT], const bool (&store)[COUNT]) {
  float amax[COUNT];
#pragma unroll
  for (int j = 0; j < COUNT; ++j) amax[j] = fabsf(v[j]);
#pragma unroll
  for (int offset = RS_LANES / 2; offset >= 1; offset /= 2) {
#pragma unroll
    for (int j = 0; j < COUNT; ++j) amax[j] = rs_max_nan(amax[j], rs_shfl_xor(amax[j], offset));
  }
#pragma unroll
  for (int j = 0; j < COUNT; ++j) {
    const float scale = rs_div(rs_max_nan(0.0f, amax[j]), 127.0f);  // from 0, as rs_quantize_block's amax
    const float inv = scale == 0.0f ? 0.0f : rs_div(1.0f, scale);
    if (store[j]) {
      q[j][rs_lane()] = (signed char)rs_round_q8(rs_mul(v[j], inv));
      if (rs_lane() == 0) *d[j] = rs_float_to_half(scale);
    }
  }
}

RS_DEVICE void rs_quantize_block_lanes(float v, signed char* __restrict__ q, unsigned short* __restrict__ d) {
  const float vs[1] = {v};
  signed char* const qs[1] = {q};
  unsigned short* const ds[1] = {d};
  const bool store[1] = {true};
  rs_quantize_blocks_lanes<1>(vs, qs, ds, store);
}
