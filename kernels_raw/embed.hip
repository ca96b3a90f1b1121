// Embedding lookup: the twin of spec.embed. out[r, k] = f32(d[id, k/32]) * f32(q[id, k]), exact.
#include "portable.h"

#define RS_QK 32
#define RS_EMBED_THREADS 256

// q int8 [n_vocab, n_embd], d fp16 [n_vocab, n_embd/32], ids int32 [rows] (checked by the wrapper),
// out float32 [rows, n_embd]. Grid: (ceil(n_embd / threads), rows).
extern "C" __global__ void __launch_bounds__(RS_EMBED_THREADS)
embed(const signed char* __restrict__ q, const unsigned short* __restrict__ d, const int* __restrict__ ids,
      int n_embd, float* __restrict__ out) {
  rs_kernel_begin();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_embd) return;
  const long long id = ids[blockIdx.y];
  const float scale = rs_half_to_float(d[id * (n_embd / RS_QK) + i / RS_QK]);
  out[(long long)blockIdx.y * n_embd + i] = rs_mul(scale, (float)q[id * n_embd + i]);
}
