// Rotary position embedding: the twin of spec.rope. Row r is at position pos0 + r; pair i of a head is
// (2i, 2i+1), or (i, i + half) when neox; dimensions from 2*half on pass through.
//   a' = a*c - b*s,  b' = a*s + b*c   with c, s = cos, sin[pos, i] from the uploaded table
#include "portable.h"

#define RS_ROPE_THREADS 256

// x, out float32 [rows, heads, dim]; cos, sin float32 [n_ctx, half]. Grid: ceil(rows*heads*dim / threads).
extern "C" __global__ void __launch_bounds__(RS_ROPE_THREADS)
rope(const float* __restrict__ x, const float* __restrict__ cos_table, const float* __restrict__ sin_table,
     int pos0, int rows, int heads, int dim, int half, int neox, float* __restrict__ out) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)rows * heads * dim) return;
  const int d = (int)(e % dim);
  const long long head = e - d;  // index of the head's element 0
  const int pos = pos0 + (int)(e / ((long long)heads * dim));
  if (d >= 2 * half) {
    out[e] = x[e];
    return;
  }
  int i, ia, ib;  // pair index, and the indices of its a and b
  if (neox) {
    i = d < half ? d : d - half;
    ia = i;
    ib = i + half;
  } else {
    i = d / 2;
    ia = 2 * i;
    ib = 2 * i + 1;
  }
  const float a = x[head + ia], b = x[head + ib];
  const float c = cos_table[(long long)pos * half + i], s = sin_table[(long long)pos * half + i];
  out[e] = d == ia ? rs_sub(rs_mul(a, c), rs_mul(b, s)) : rs_add(rs_mul(a, s), rs_mul(b, c));
}
