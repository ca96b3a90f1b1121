// Rotary position embedding: the twin of spec.rope. Row r is at position pos[0] + r (the first position is
// read from device memory, so a captured pass serves every position); pair i of a head is (2i, 2i+1), or
// (i, i + half) when neox; dimensions from 2*half on pass through.
//   a' = a*c - b*s,  b' = a*s + b*c   with c, s = cos, sin[pos, i] from the uploaded table
// rope rotates one array; rope_kv rotates the query and key heads of a pass and stores the keys and values
// in the KV cache (the twin of spec.rope on q and k followed by CpuBackend.kv_write): one launch for three.
#include "portable.h"

#define RS_ROPE_THREADS 256
#define RS_ROPE_KV_THREADS 128  // threads per (row, head) of rope_kv; heads of more dims loop

// Element d of one rotated head: `head` points at the head's element 0, `c`, `s` at the table row of its
// position.
RS_DEVICE float rs_rope_element(const float* __restrict__ head, int d, const float* __restrict__ c,
                                const float* __restrict__ s, int half, int neox) {
  if (d >= 2 * half) return head[d];
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
  const float a = head[ia], b = head[ib];
  return d == ia ? rs_sub(rs_mul(a, c[i]), rs_mul(b, s[i])) : rs_add(rs_mul(a, s[i]), rs_mul(b, c[i]));
}

// x, out float32 [rows, heads, dim]; cos, sin float32 [n_table, half]; pos int32 [1].
// Grid: ceil(rows*heads*dim / threads).
extern "C" __global__ void __launch_bounds__(RS_ROPE_THREADS)
rope(const float* __restrict__ x, const float* __restrict__ cos_table, const float* __restrict__ sin_table,
     const int* __restrict__ pos, int rows, int heads, int dim, int half, int neox, float* __restrict__ out) {
  rs_kernel_begin();
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)rows * heads * dim) return;
  const int d = (int)(e % dim);
  const long long p = pos[0] + e / ((long long)heads * dim);
  out[e] = rs_rope_element(x + (e - d), d, cos_table + p * half, sin_table + p * half, half, neox);
}

// q [rows, heads, dim], k and v [rows, kv_heads, dim], float32, each row `*_stride` floats after the last
// (views of the stacked Q/K/V GEMV output); pos int32 [1]. Writes q_out float32 [rows, heads, dim] and
// k_cache, v_cache float32 [kv_heads, cache_len, dim] at positions pos[0] .. pos[0]+rows-1.
// Grid: (rows, heads + kv_heads) blocks: y < heads rotates query head y, the others key head y - heads and
// copy its values. `live`: only the first live[0] rows, or all where null (rs_live_rows).
extern "C" __global__ void __launch_bounds__(RS_ROPE_KV_THREADS)
rope_kv(const float* __restrict__ q, long long q_stride, const float* __restrict__ k, long long k_stride,
        const float* __restrict__ v, long long v_stride, const float* __restrict__ cos_table,
        const float* __restrict__ sin_table, const int* __restrict__ pos, int heads, int kv_heads, int dim,
        int half, int neox, int cache_len, float* __restrict__ q_out, float* __restrict__ k_cache,
        float* __restrict__ v_cache, const int* __restrict__ live) {
  const int row = blockIdx.x, slot = blockIdx.y;
  if (row >= rs_live_rows(live, gridDim.x)) return;  // (no key or value of it is written)
  rs_kernel_begin_early();  // (attention, after it, asks the L2 cache for the older keys and values sooner)
  const long long p = pos[0] + row;
  const float* c = cos_table + p * half;
  const float* s = sin_table + p * half;
  if (slot < heads) {
    const float* src = q + row * q_stride + (long long)slot * dim;
    float* dst = q_out + ((long long)row * heads + slot) * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = rs_rope_element(src, d, c, s, half, neox);
  } else {
    const int g = slot - heads;
    const float* src = k + row * k_stride + (long long)g * dim;
    const float* vsrc = v + row * v_stride + (long long)g * dim;
    const long long at = ((long long)g * cache_len + p) * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
      k_cache[at + d] = rs_rope_element(src, d, c, s, half, neox);
      v_cache[at + d] = vsrc[d];
    }
  }
}
