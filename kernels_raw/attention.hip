// Causal GQA attention for R query rows at positions pos0 .. pos0+R-1: the twin of spec.attention, and, when
// asked, the quantization of its output (the twin of spec.quantize_q8_0 on the [R, H*D] rows: with D a
// multiple of 32 every block of 32 lies in one head). pos0 is read from device memory (pos[0]), so one
// captured pass serves every position; the scratch buffers are sized for the whole cache.
//
//   s_t = lane_sum_d(q * k_t) * scale      (scale = 1 / sqrt(D), computed by the wrapper as the spec does)
//   m   = max_t s_t;   e_t = exp(s_t - m)  (positions row r may not see: s_t = -inf)
//   out = chunked_sum_t(e_t * v_t) / chunked_sum_t(e_t)
//
// One block of THREADS threads per (row, head). Before waiting for the kernel before it (rs_kernel_begin),
// the block asks the L2 cache for its share of the keys and values of the positions before pos0: earlier
// passes wrote them, and phases 1 and 3 read them (a hint only: pos0 is read again after the wait, and a
// prefetch reads no value). Then four phases separated by barriers:
//   1. each group of 32 lanes takes positions t (RS_ATTN_KEYS(MAXD) at a time, their loads in flight
//      together) and computes s_t with spec.lane_sum over d; max over t.
//   2. every thread turns the scores of the positions the row sees into e_t (phase 3 reads no other).
//   3. items (chunk, column), each taken by 4 neighbouring threads (those of column 0 also sum the
//      denominator's e_t from the same positions, in the same lanes and order as a column of its own): the
//      chunk's position t goes to lane t % 32 (spec.lane_sum), and thread `part` of the item holds lanes
//      8*part .. 8*part+7. It loads its lanes' positions in rounds of 2 per lane, every load of a round in
//      flight together, and adds each lane's in order; then the spec's tree over the 32 lanes: lanes
//      i+16 onto i (part 2 onto part 0, part 3 onto part 1, exchanged between the threads), i+8 onto i
//      (part 1 onto part 0), then 4, 2, 1 apart inside part 0. Only the positions the row sees are added
//      (a hidden e_t * v_t would be NaN where a later row wrote an infinite v_t; its e_t is +0 and
//      changes no sum).
//   4. column totals: the chunks' sums added in order to +0.0 (spec.chunked_sum), then num / denom.
// e_t and the chunk sums live in shared memory up to RS_ATTN_SHARED_POS positions, beyond that in a scratch
// buffer from the wrapper (global memory: contexts of any length).
#include "portable.h"
#include "lane_sum.h"
#include "exp.h"
#include "quantize.h"

// Threads per block, a template parameter: 512 (16 groups of 32) where a pass of few rows and heads has few
// blocks, each on its own multiprocessor; 256 or 128 where there are more blocks than multiprocessors, so
// that two or four share one instead of waiting for a second wave (refspec.gpu.GpuBackend.attention_threads).
// Every output is the same sequence of operations with any of them.
#define RS_ATTN_MAX_THREADS 512
#if defined(RS_HIP)
#define RS_ATTN_BOUNDS(threads) __launch_bounds__(threads)  // HIP's second argument means something else
#else
#define RS_ATTN_BOUNDS(threads) __launch_bounds__(threads, RS_ATTN_MAX_THREADS / (threads))
#endif
#define RS_ATTN_CHUNK 256    // spec.ATTN_CHUNK
#define RS_ATTN_MAX_DIM 512  // head dims up to this (the wrapper checks)
#define RS_ATTN_PARTS 4      // threads per (chunk, column) item in phase 3, 8 lanes each
#define RS_ATTN_SHARED_POS 1024  // up to this many positions, e_t and the chunk sums stay in shared memory
#define RS_ATTN_SHARED_PARTS ((RS_ATTN_SHARED_POS / RS_ATTN_CHUNK) * (RS_ATTN_MAX_DIM + 1))

// Keys a group loads at once in phase 1: more for short heads, whose keys take few registers.
#define RS_ATTN_KEYS(maxd) ((maxd) <= 64 ? 8 : (maxd) <= 128 ? 4 : 2)

// spec._tree on 32 lane values held by 4 neighbouring threads, 8 each (lanes 8*part + a, a = 0..7): lane
// i + width added onto lane i for width = 16, 8 (from another thread), then 4, 2, 1 (inside part 0). Every
// thread of the group calls it (the exchanges need all 32 lanes); part 0 gets the sum.
RS_DEVICE float rs_tree_of_parts(float (&lanes)[8]) {
#pragma unroll
  for (int a = 0; a < 8; ++a) {  // width 16: parts 2, 3 onto parts 0, 1 (threads 2 apart)
    const float other = rs_shfl_xor(lanes[a], 2);
    lanes[a] = rs_add(lanes[a], other);
  }
#pragma unroll
  for (int a = 0; a < 8; ++a) {  // width 8: part 1 onto part 0 (threads 1 apart)
    const float other = rs_shfl_xor(lanes[a], 1);
    lanes[a] = rs_add(lanes[a], other);
  }
#pragma unroll
  for (int a = 0; a < 4; ++a) lanes[a] = rs_add(lanes[a], lanes[a + 4]);
#pragma unroll
  for (int a = 0; a < 2; ++a) lanes[a] = rs_add(lanes[a], lanes[a + 2]);
  return rs_add(lanes[0], lanes[1]);
}

// The keys and values of the positions before pos0 (at most RS_ATTN_SHARED_POS of them) into the L2 cache,
// before the wait: the `sharers` blocks of one kv head (rows * group size) each take every sharers-th line.
// pos[0] may still be written by a kernel in flight, but it only chooses lines: it is read again after the
// wait, and prefetches read no value.
RS_DEVICE void rs_attention_prefetch(const float* kc, const float* vc, const int* pos, int cache_len, int dim,
                                     int sharers, int share, int threads) {
  const int hint = min(max(pos[0], 0), min(cache_len, RS_ATTN_SHARED_POS));
  const int lines = (int)(((long long)hint * dim * 4 + 127) / 128);  // of the keys, as many of the values
  for (int i = share * threads + threadIdx.x; i < lines; i += sharers * threads) {
    rs_prefetch_l2((const char*)kc + 128LL * i);
    rs_prefetch_l2((const char*)vc + 128LL * i);
  }
}

// q float32 [rows, heads, dim]; k_cache, v_cache float32 [kv_heads, cache_len, dim] with positions
// 0 .. pos0+rows-1 written; pos int32 [1] = pos0; e_buf float32 [rows*heads, cache_len]; part_buf float32
// [rows*heads, ceil(cache_len / 256), dim+1]; out float32 [rows, heads, dim]; xq int8 [rows, heads*dim] and
// xd fp16 [rows, heads*dim/32], or both null (then dim need not be a multiple of 32). Grid: rows*heads blocks.
// MAXD: a multiple of 32 >= dim, at most RS_ATTN_MAX_DIM (the wrapper picks the smallest of 64, 128, 256,
// 512): a lane's share of q and of a key is MAXD / 32 registers, with no loads or products for lanes past
// dim wasted on a larger bound. THREADS: 512, 256 or 128 (each block may use up to 128 registers a thread).
template <int MAXD, int THREADS>
__global__ void RS_ATTN_BOUNDS(THREADS)
attention(const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
          const int* __restrict__ pos, int rows, int heads, int kv_heads, int dim, int cache_len, float scale,
          float* __restrict__ e_buf, float* __restrict__ part_buf, float* __restrict__ out,
          signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  const int rh = blockIdx.x;  // = row * heads + head
  const int row = rh / heads, head = rh % heads;
  const int group_size = heads / kv_heads;
  const int kv_head = head / group_size;
  const float* kc = k_cache + (long long)kv_head * cache_len * dim;
  const float* vc = v_cache + (long long)kv_head * cache_len * dim;
  rs_attention_prefetch(kc, vc, pos, cache_len, dim, rows * group_size, row * group_size + head % group_size,
                        THREADS);
  rs_kernel_begin();
  __shared__ float group_max[THREADS / RS_LANES];
  __shared__ float total[RS_ATTN_MAX_DIM + 1];
  __shared__ float e_shared[RS_ATTN_SHARED_POS];
  __shared__ float parts_shared[RS_ATTN_SHARED_PARTS];
  const int pos0 = pos[0];
  const int n_pos = pos0 + rows;   // positions every row's sums run over
  const int n_vis = pos0 + row + 1;  // positions this row sees
  const float* qv = q + (long long)rh * dim;
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
  constexpr int KEYS = RS_ATTN_KEYS(MAXD);
  float m = neg_inf;
  for (int t0 = rs_group(); t0 < n_vis; t0 += KEYS * rs_groups()) {  // KEYS keys in flight
    float kreg[KEYS][MAXD / RS_LANES];
#pragma unroll
    for (int u = 0; u < KEYS; ++u) {
      const int t = t0 + u * rs_groups();
      const float* kt = kc + (long long)(t < n_vis ? t : t0) * dim;
#pragma unroll
      for (int j = 0; j < MAXD / RS_LANES; ++j) {
        const int d = rs_lane() + RS_LANES * j;
        kreg[u][j] = d < dim ? kt[d] : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < KEYS; ++u) {
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

  // 2. e_t = exp(s_t - m) for the positions the row sees
  for (int t = threadIdx.x; t < n_vis; t += THREADS) e[t] = refspec_exp(rs_sub(e[t], m));
  __syncthreads();

  // 3. chunk sums of e_t * v[t, col] (col < dim), and of e_t (stored as column dim), which the threads of
  //    column 0 add up beside their own from the same loads
  const int cols = dim + 1;
  const int n_chunks = (n_pos + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  const int max_chunks = (cache_len + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  float* parts = small ? parts_shared : part_buf + (long long)rh * max_chunks * cols;
  const int part = threadIdx.x % RS_ATTN_PARTS;
  const int n_work = n_chunks * dim * RS_ATTN_PARTS;
  for (int w0 = 0; w0 < n_work; w0 += THREADS) {  // the same trips for every thread: all shuffle
    const int work = w0 + threadIdx.x;
    const int item = work / RS_ATTN_PARTS;  // < n_chunks * dim where work < n_work
    const int chunk = item / dim, col = item % dim;
    const int base = chunk * RS_ATTN_CHUNK;
    const int seen = work < n_work ? n_vis - base : 0;  // positions of the chunk the row sees, if > 0
    float lanes[8], denom[8];
#pragma unroll
    for (int a = 0; a < 8; ++a) lanes[a] = denom[a] = 0.0f;
#pragma unroll
    for (int round = 0; round < 4; ++round) {
      if (8 * part + RS_LANES * 2 * round >= seen) break;  // nothing of this round's positions is seen
      float et[2][8], vt[2][8];  // lane 8*part + a, position base + lane + 32 * (2 * round + i)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int a = 0; a < 8; ++a) {
          const int off = 8 * part + a + RS_LANES * (2 * round + i);  // < RS_ATTN_CHUNK
          const bool in = off < seen;
          const int t = base + off;
          et[i][a] = in ? e[t] : 0.0f;
          vt[i][a] = in ? vc[(long long)t * dim + col] : 0.0f;
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int a = 0; a < 8; ++a) {
          if (8 * part + a + RS_LANES * (2 * round + i) < seen) {
            lanes[a] = rs_add(lanes[a], rs_mul(et[i][a], vt[i][a]));
            if (col == 0) denom[a] = rs_add(denom[a], et[i][a]);
          }
        }
      }
    }
    const float sum = rs_tree_of_parts(lanes);
    const float denom_sum = rs_tree_of_parts(denom);  // every thread: the exchanges need the whole group
    if (part == 0 && work < n_work) {
      parts[chunk * cols + col] = sum;
      if (col == 0) parts[chunk * cols + dim] = denom_sum;
    }
  }
  __syncthreads();

  // 4. the chunks' sums in order, then num / denom
  for (int col = threadIdx.x; col < cols; col += THREADS) {
    float sum = 0.0f;
    for (int chunk = 0; chunk < n_chunks; ++chunk) sum = rs_add(sum, parts[chunk * cols + col]);
    total[col] = sum;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < dim; d += THREADS) {
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
