// Causal GQA attention for R query rows at positions pos0 .. pos0+R-1: the twin of spec.attention, and, when
// asked, the quantization of its output (the twin of spec.quantize_q8_0 on the [R, H*D] rows: with D a
// multiple of 32 every block of 32 lies in one head). pos0 is read from device memory (pos[0]), so one
// captured pass serves every position; the scratch buffers are sized for the whole cache.
//
//   s_t = lane_sum_d(q * k_t) * scale      (scale = 1 / sqrt(D), computed by the wrapper as the spec does)
//   m   = max_t s_t;   e_t = exp(s_t - m)  (positions row r may not see: s_t = -inf)
//   out = chunked_sum_t(e_t * v_t) / chunked_sum_t(e_t)
//
// One block of threads per (row, head), in four phases separated by barriers:
//   1. each group of 32 lanes takes positions t (RS_ATTN_KEYS at a time) and computes s_t with spec.lane_sum
//      over d; max over t.
//   2. every thread turns scores into e_t, for all n_pos = pos0 + R positions the spec sums over.
//   3. every thread takes items (chunk, column), column D being the denominator: one thread walks the
//      chunk's 256 positions in order into 32 lane values (position t goes to lane t % 32, as in
//      spec.lane_sum) and adds them in the spec's tree.
//   4. column totals: the chunks' sums added in order to +0.0 (spec.chunked_sum), then num / denom.
// e_t and the chunk sums live in shared memory up to RS_ATTN_SHARED_POS positions, beyond that in a scratch
// buffer from the wrapper (global memory: contexts of any length).
#include "portable.h"
#include "lane_sum.h"
#include "exp.h"
#include "quantize.h"

#define RS_ATTN_THREADS 256  // 8 groups of 32
#define RS_ATTN_CHUNK 256    // spec.ATTN_CHUNK
#define RS_ATTN_MAX_DIM 512  // head dims up to this (the wrapper checks)
#define RS_ATTN_KEYS 4       // keys a group loads at once in phase 1
#define RS_ATTN_SHARED_POS 1024  // up to this many positions, e_t and the chunk sums stay in shared memory
#define RS_ATTN_SHARED_PARTS ((RS_ATTN_SHARED_POS / RS_ATTN_CHUNK) * (RS_ATTN_MAX_DIM + 1))

// spec._tree on 32 lane values held by one thread: lane i + width added onto lane i, width = 16, 8, 4, 2, 1.
RS_DEVICE float rs_tree_of_lanes(float (&lanes)[RS_LANES]) {
#pragma unroll
  for (int i = 0; i < 16; ++i) lanes[i] = rs_add(lanes[i], lanes[i + 16]);
#pragma unroll
  for (int i = 0; i < 8; ++i) lanes[i] = rs_add(lanes[i], lanes[i + 8]);
#pragma unroll
  for (int i = 0; i < 4; ++i) lanes[i] = rs_add(lanes[i], lanes[i + 4]);
#pragma unroll
  for (int i = 0; i < 2; ++i) lanes[i] = rs_add(lanes[i], lanes[i + 2]);
  return rs_add(lanes[0], lanes[1]);
}

// q float32 [rows, heads, dim]; k_cache, v_cache float32 [kv_heads, cache_len, dim] with positions
// 0 .. pos0+rows-1 written; pos int32 [1] = pos0; e_buf float32 [rows*heads, cache_len]; part_buf float32
// [rows*heads, ceil(cache_len / 256), dim+1]; out float32 [rows, heads, dim]; xq int8 [rows, heads*dim] and
// xd fp16 [rows, heads*dim/32], or both null (then dim need not be a multiple of 32). Grid: rows*heads blocks.
// MAXD: a multiple of 32 >= dim, at most RS_ATTN_MAX_DIM (the wrapper picks the smallest of 64, 128, 256,
// 512): a lane's share of q and of a key is MAXD / 32 registers, with no loads or products for lanes past
// dim wasted on a larger bound.
template <int MAXD>
__global__ void __launch_bounds__(RS_ATTN_THREADS)
attention(const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
          const int* __restrict__ pos, int rows, int heads, int kv_heads, int dim, int cache_len, float scale,
          float* __restrict__ e_buf, float* __restrict__ part_buf, float* __restrict__ out,
          signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  rs_kernel_begin();
  __shared__ float group_max[RS_ATTN_THREADS / RS_LANES];
  __shared__ float total[RS_ATTN_MAX_DIM + 1];
  __shared__ float e_shared[RS_ATTN_SHARED_POS];
  __shared__ float parts_shared[RS_ATTN_SHARED_PARTS];
  const int rh = blockIdx.x;  // = row * heads + head
  const int row = rh / heads, head = rh % heads;
  const int kv_head = head / (heads / kv_heads);
  const int pos0 = pos[0];
  const int n_pos = pos0 + rows;   // positions every row's sums run over
  const int n_vis = pos0 + row + 1;  // positions this row sees
  const float* qv = q + (long long)rh * dim;
  const float* kc = k_cache + (long long)kv_head * cache_len * dim;
  const float* vc = v_cache + (long long)kv_head * cache_len * dim;
  const bool small = n_pos <= RS_ATTN_SHARED_POS;  // the same for the whole block
  float* e = small ? e_shared : e_buf + (long long)rh * cache_len;
  const float neg_inf = rs_as_float((int)0xff800000);

  // 1. scores, one position per group of 32 lanes; lane l holds q[l + 32j] in registers and loads the
  //    key's elements l + 32j all at once before adding them in the spec's order
  float qreg[MAXD / RS_LANES];
#pragma unroll
  for (int j = 0; j < MAXD / RS_LANES; ++j) {
    const int d = rs_lane() + RS_LANES * j;
    qreg[j] = d < dim ? qv[d] : 0.0f;
  }
  float m = neg_inf;
  for (int t0 = rs_group(); t0 < n_vis; t0 += RS_ATTN_KEYS * rs_groups()) {  // RS_ATTN_KEYS keys in flight
    float kreg[RS_ATTN_KEYS][MAXD / RS_LANES];
#pragma unroll
    for (int u = 0; u < RS_ATTN_KEYS; ++u) {
      const int t = t0 + u * rs_groups();
      const float* kt = kc + (long long)(t < n_vis ? t : t0) * dim;
#pragma unroll
      for (int j = 0; j < MAXD / RS_LANES; ++j) {
        const int d = rs_lane() + RS_LANES * j;
        kreg[u][j] = d < dim ? kt[d] : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < RS_ATTN_KEYS; ++u) {
      const int t = t0 + u * rs_groups();
      float acc = 0.0f;  // lane value: +0.0, then q[l]*k[l], q[l+32]*k[l+32], ...
#pragma unroll
      for (int j = 0; j < MAXD / RS_LANES; ++j) {
        if (rs_lane() + RS_LANES * j < dim) acc = rs_add(acc, rs_mul(qreg[j], kreg[u][j]));
      }
      const float s = rs_mul(rs_lane_tree(acc), scale);
      if (t < n_vis) {  // the same for the whole group
        if (rs_lane() == 0) e[t] = s;
        m = rs_max_nan(m, s);
      }
    }
  }
  if (rs_lane() == 0) group_max[rs_group()] = m;
  __syncthreads();
  m = group_max[0];
  for (int i = 1; i < rs_groups(); ++i) m = rs_max_nan(m, group_max[i]);

  // 2. e_t = exp(s_t - m); hidden positions have s_t = -inf
  const float e_hidden = refspec_exp(rs_sub(neg_inf, m));
  for (int t = threadIdx.x; t < n_pos; t += blockDim.x) e[t] = t < n_vis ? refspec_exp(rs_sub(e[t], m)) : e_hidden;
  __syncthreads();

  // 3. chunk sums of e_t * v[t, col] (col < dim) and of e_t (col == dim)
  const int cols = dim + 1;
  const int n_chunks = (n_pos + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  const int max_chunks = (cache_len + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  float* parts = small ? parts_shared : part_buf + (long long)rh * max_chunks * cols;
  for (int item = threadIdx.x; item < n_chunks * cols; item += blockDim.x) {
    const int chunk = item / cols, col = item % cols;
    const int base = chunk * RS_ATTN_CHUNK;
    const int len = n_pos - base < RS_ATTN_CHUNK ? n_pos - base : RS_ATTN_CHUNK;
    float lanes[RS_LANES];
#pragma unroll
    for (int l = 0; l < RS_LANES; ++l) lanes[l] = 0.0f;
#pragma unroll 1
    for (int j = 0; j < len; j += RS_LANES) {
      float et[RS_LANES], vt[RS_LANES];  // the loads of 32 positions in flight before their additions
#pragma unroll
      for (int l = 0; l < RS_LANES; ++l) {
        const int t = base + j + l;
        const bool in = j + l < len;
        et[l] = in ? e[t] : 0.0f;
        vt[l] = in && col < dim ? vc[(long long)t * dim + col] : 0.0f;
      }
#pragma unroll
      for (int l = 0; l < RS_LANES; ++l) {
        if (j + l < len) lanes[l] = rs_add(lanes[l], col < dim ? rs_mul(et[l], vt[l]) : et[l]);
      }
    }
    parts[item] = rs_tree_of_lanes(lanes);
  }
  __syncthreads();

  // 4. the chunks' sums in order, then num / denom
  for (int col = threadIdx.x; col < cols; col += blockDim.x) {
    float sum = 0.0f;
    for (int chunk = 0; chunk < n_chunks; ++chunk) sum = rs_add(sum, parts[chunk * cols + col]);
    total[col] = sum;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const float o = rs_div(total[d], total[dim]);
    out[(long long)rh * dim + d] = o;
    total[d] = o;  // only this thread reads total[d]; total[dim] stays
  }
  if (!xq) return;
  __syncthreads();
  // 5. the head's blocks of 32 outputs quantized, one per group of 32 lanes, one value per lane
  //    (rs_quantize_block_lanes); block b of the head is block head * dim/32 + b of the row's [heads*dim].
  for (int b = rs_group(); b < dim / RS_QK; b += rs_groups()) {  // the same for the whole group
    const long long block = (long long)rh * (dim / RS_QK) + b;
    rs_quantize_block_lanes(total[b * RS_QK + rs_lane()], xq + block * RS_QK, xd + block);
  }
}
