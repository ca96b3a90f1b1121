// Causal GQA attention for R query rows at positions pos0 .. pos0+R-1: the twin of spec.attention, and, when
// asked, the quantization of its output (the twin of spec.quantize_q8_0 on the [R, H*D] rows: with D a
// multiple of 32 every block of 32 lies in one head). pos0 is read from device memory (pos[0]), so one
// captured pass serves every position; the scratch buffers are sized for the whole cache.
//
//   s_t = lane_sum_d(q * k_t) * scale      (scale = 1 / sqrt(D), computed by the wrapper as the spec does)
//   m   = max_t s_t;   e_t = exp(s_t - m)  (positions row r may not see: s_t = -inf)
//   out = chunked_sum_t(e_t * v_t) / chunked_sum_t(e_t)
//
// Two ways to run it, the same operations in the same order (the same bits); refspec.gpu.GpuBackend
// .attention_plan picks one per launch:
//   `attention`: one block per (row, head) runs every phase below (short contexts: the fewest steps);
//   `attention_scores` then `attention_values` spread a row's positions over many blocks, each block taking
//     one or more query heads of a kv head, of one or more consecutive rows (long contexts, many rows): phase 1
//     by slices of 64-256 positions,
//     phases 2 and 3 by chunks of 256 (each with the max of the slices' maxes), and phase 4 in the last
//     chunk's block to finish.
// Before waiting for the kernel before it (rs_kernel_begin), a block asks the L2 cache for its share of the
// keys and values of the positions before pos0: earlier passes wrote them, and phases 1 and 3 read them (a
// hint only: pos0 is read again after the wait, and a prefetch reads no value). The phases:
//   1. each group of 32 lanes takes positions t (RS_ATTN_KEYS(MAXD) at a time, their loads in flight
//      together) and computes s_t with spec.lane_sum over d; max over t (exact in any order).
//   2. the scores of the positions the row sees become e_t (phase 3 reads no other).
//   3. items (chunk, 8 or 4 neighbouring columns: 8 for blocks of up to two heads), a group of 32 lanes each:
//      the chunk's position t goes to lane t % 32 (spec.lane_sum), which loads its positions' values of the
//      item's columns (16 bytes a load) and e_t, 4 positions at a time with every load in flight together,
//      and adds each lane's in order, for every
//      head at once; the denominators (the e_t of the same positions, the same lanes and order) ride with
//      the item of column 0. Then the spec's tree over the 32 lanes for all the group's sums at once
//      (RsTreeSlots). Only the positions the row sees are added (a hidden e_t * v_t would be NaN where a later
//      row wrote an infinite v_t; its e_t is +0 and changes no sum).
//   4. column totals: the chunks' sums added in order to +0.0 (spec.chunked_sum; chunks the row does not
//      see add +0 and change nothing, a lane sum is never -0), then num / denom; then the quantization.
// In `attention`, e_t and the chunk sums live in shared memory up to RS_ATTN_SHARED_POS positions, beyond
// that in scratch buffers from the wrapper (global memory: contexts of any length); the two kernels pass
// scores, maxes and chunk sums through such buffers.
#include "portable.h"
#include "lane_sum.h"
#include "exp.h"
#include "quantize.h"

// Threads per block, a template parameter: 512 (16 groups of 32) where a pass of few rows and heads has few
// blocks, each on its own multiprocessor; 256 or 128 where there are more blocks than multiprocessors, so
// that two or four share one instead of waiting for a second wave (refspec.gpu.GpuBackend.attention_threads).
// Every output is the same sequence of operations with any of them.
#define RS_ATTN_MAX_THREADS 512
// Launch bounds: on NVIDIA, at least `blocks` blocks of `threads` a multiprocessor (65536 registers shared by
// them); RS_ATTN_BOUNDS: RS_ATTN_MAX_THREADS / THREADS blocks (up to 128 registers a thread) where `fits` (the
// head size's registers allow it), else one.
#if defined(RS_HIP)
#define RS_ATTN_LAUNCH(threads, blocks) __launch_bounds__(threads)  // HIP's second argument means something else
#else
#define RS_ATTN_LAUNCH(threads, blocks) __launch_bounds__(threads, blocks)
#endif
#define RS_ATTN_BOUNDS(threads, fits) RS_ATTN_LAUNCH(threads, (fits) ? RS_ATTN_MAX_THREADS / (threads) : 1)
#define RS_ATTN_CHUNK 256    // spec.ATTN_CHUNK
#define RS_ATTN_MAX_DIM 512  // head dims up to this (the wrapper checks)
#define RS_ATTN_SHARED_POS 1024  // up to this many positions, e_t and the chunk sums stay in shared memory
#define RS_ATTN_SHARED_PARTS ((RS_ATTN_SHARED_POS / RS_ATTN_CHUNK) * (RS_ATTN_MAX_DIM + 1))

// Keys a group loads at once in phase 1: 8 for heads up to 128 wide, 4 up to 256, else 2 (16 groups then read
// 128 positions in one round of loads). Before phase 1's trees ran as one slot tree a round, heads of 128 took 4
// keys at 3-4 heads a block (four heads spilled at 5); now 8 fit them (118 registers, no spills), and 256-wide
// heads 4. H200, 2026-12-04, a chain of 32 launches as planned, us at position 64 / 300 (in turn, twice;
// tests/results/attention_keys8_ab_2026_12_04_h200.txt): llama-8b's 16 rows (4 heads a block) 9.77 -> 9.01 /
// 20.16 -> 19.25; qwen2.5-32b's 40 heads at 8 rows 8.67 -> 8.05 / 18.62 -> 17.58, 16 rows 12.73 -> 12.59 /
// 32.27 -> 28.92; qwen3.5-27b's 24 heads of 256 at 8 rows 13.69 -> 12.80 / 36.95 -> 31.15, 16 rows 19.65 ->
// 17.29 / 56.89 -> 44.18, one row 7.36 -> 7.42 / 19.62 -> 18.68; the one- and two-head blocks unchanged.
#define RS_ATTN_KEYS(maxd) ((maxd) <= 128 ? 8 : (maxd) <= 256 ? 4 : 2)
#define RS_ATTN_HEADS 4  // query heads of one kv head that attention_scores and attention_values take together, at most

// The keys and values of positions t_begin .. min(t_end, pos0, cache_len)-1 into the L2 cache, before the
// wait: the `sharers` blocks that read them each take every sharers-th line. pos[0] may still be written by
// a kernel in flight, but it only chooses lines: it is read again after the wait, and prefetches read no
// value.
RS_DEVICE void rs_attention_prefetch(const float* kc, const float* vc, const int* pos, int cache_len, int dim,
                                     int t_begin, int t_end, int sharers, int share, int threads) {
  const int hint = min(max(pos[0], 0), min(t_end, cache_len));
  const long long first = (long long)t_begin * dim * 4 / 128;
  const int lines = (int)(((long long)hint * dim * 4 + 127) / 128 - first);  // of the keys, as many of the values
  for (int i = share * threads + threadIdx.x; i < lines; i += sharers * threads) {
    rs_prefetch_l2((const char*)kc + 128LL * (first + i));
    rs_prefetch_l2((const char*)vc + 128LL * (first + i));
  }
}

// Phase 1 over positions t_begin .. t_end-1 for hb <= HB query heads that share their keys (head i's query at
// q + i*dim): group g takes t_begin + g, then every groups-th position, RS_ATTN_KEYS(MAXD) keys at a time,
// their loads in flight together, each key used for every head (keys past t_end: loaded as the first, their
// sums computed and never used). Lane l holds q[l + 32j] in registers and the key's elements l + 32j, added
// in the spec's order into slot u*HB + i (key u, head i); the spec's tree then runs for all KEYS*HB slots at
// once (RsTreeSlots: 16 exchanges for 16 slots where one tree a slot took 80), and the lane that ends up
// owning a slot scales it. Head i's s_t goes to e[i*e_stride + t - e_base]; m[i] becomes the group's max of
// head i's scores (-inf if it had none), the same in every lane of the group. rs_attention_scores_of takes
// the queries as rs_attention_load_q left them in registers (attention_scores loads them once for all its
// slices).
template <int MAXD, int HB>
RS_DEVICE void rs_attention_load_q(const float* __restrict__ q, int hb, int dim, float (&qreg)[HB][MAXD / RS_LANES]) {
#pragma unroll
  for (int i = 0; i < HB; ++i) {
#pragma unroll
    for (int j = 0; j < MAXD / RS_LANES; ++j) {
      const int d = rs_lane() + RS_LANES * j;
      qreg[i][j] = i < hb && d < dim ? q[i * dim + d] : 0.0f;
    }
  }
}

// RG > 1 (attention_scores' units of rows): the same for rg <= RG consecutive rows at once, each key loaded once for
// all of them (RS_ATTN_KEYS(MAXD) / RG keys at a time): row r's head i is slot r*HB + i of qreg and m, sees the
// positions before min(t_end + r, t_stop), and writes its scores at e[r*e_row_stride + i*e_stride + t - e_base].
template <int MAXD, int HB, int RG = 1>
RS_DEVICE void rs_attention_scores_of(const float (&qreg)[RG * HB][MAXD / RS_LANES], int hb,
                                      const float* __restrict__ kc, int dim, float scale, int t_begin, int t_end,
                                      float* __restrict__ e, long long e_stride, int e_base, float (&m)[RG * HB],
                                      int rows_given = 1, int t_stop = 0, long long e_row_stride = 0) {
  const int rg = RG == 1 ? 1 : rows_given;
  const int t_last = RG == 1 ? t_end : min(t_end + rg - 1, t_stop);  // the last row's end
#pragma unroll
  for (int i = 0; i < RG * HB; ++i) m[i] = rs_as_float((int)0xff800000);  // -inf
  constexpr int KEYS = RS_ATTN_KEYS(MAXD) / RG;
  constexpr int SLOTS = KEYS * RG * HB;  // slot (u * RG + r) * HB + i: key u, row r, head i
  for (int t0 = t_begin + rs_group(); t0 < t_last; t0 += KEYS * rs_groups()) {
    float kreg[KEYS][MAXD / RS_LANES];
#pragma unroll
    for (int u = 0; u < KEYS; ++u) {
      const int t = t0 + u * rs_groups();
      const float* kt = kc + (long long)(t < t_last ? t : t0) * dim;
#pragma unroll
      for (int j = 0; j < MAXD / RS_LANES; ++j) {
        const int d = rs_lane() + RS_LANES * j;
        kreg[u][j] = d < dim ? kt[d] : 0.0f;
      }
    }
    float acc[SLOTS];  // lane values: +0.0, then q[l]*k[l], q[l+32]*k[l+32], ...
#pragma unroll
    for (int u = 0; u < KEYS; ++u) {
#pragma unroll
      for (int i = 0; i < RG * HB; ++i) {
        float a = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXD / RS_LANES; ++j) {
          if (rs_lane() + RS_LANES * j < dim) a = rs_add(a, rs_mul(qreg[i][j], kreg[u][j]));
        }
        acc[u * RG * HB + i] = a;
      }
    }
    int first = 0;
    bool owner = true;
    RsTreeSlots<SLOTS, SLOTS, RS_LANES / 2>::run(acc, rs_lane(), first, owner);
#pragma unroll
    for (int c = 0; c < RsTreeCount<SLOTS, RS_LANES / 2>::value; ++c) {
      const int slot = first + c, u = slot / (RG * HB), ri = slot % (RG * HB), r = ri / HB, i = ri % HB;
      const int t = t0 + u * rs_groups();
      const bool used = owner && t < (RG == 1 ? t_end : min(t_end + r, t_stop)) && i < hb && r < rg;
      const float s = rs_mul(acc[c], scale);
      if (used) e[(RG == 1 ? 0 : r * e_row_stride) + i * e_stride + t - e_base] = s;
#pragma unroll
      for (int h = 0; h < RG * HB; ++h) {  // every m[h] written each time (no register array indexed at run time)
        m[h] = rs_max_nan(m[h], used && h == ri ? s : rs_as_float((int)0xff800000));
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RG * HB; ++i) {  // the group's max of slot i in every lane (exact in any order)
#pragma unroll
    for (int offset = RS_LANES / 2; offset >= 1; offset /= 2) m[i] = rs_max_nan(m[i], rs_shfl_xor(m[i], offset));
  }
}

template <int MAXD, int HB>
RS_DEVICE void rs_attention_scores(const float* __restrict__ q, int hb, const float* __restrict__ kc, int dim,
                                   float scale, int t_begin, int t_end, float* __restrict__ e, long long e_stride,
                                   int e_base, float (&m)[HB]) {
  float qreg[HB][MAXD / RS_LANES];
  rs_attention_load_q<MAXD, HB>(q, hb, dim, qreg);
  rs_attention_scores_of<MAXD, HB>(qreg, hb, kc, dim, scale, t_begin, t_end, e, e_stride, e_base, m);
}

// The max (rs_max_nan, exact in any order) of the groups' m (each the same in every lane of its group, as
// rs_attention_scores leaves it), for the whole block; group_max holds THREADS / 32 floats of shared memory, which
// stay in use (a caller writes them again only after another barrier). Every thread calls it.
template <int THREADS>
RS_DEVICE float rs_attention_block_max(float m, float* group_max) {
  if (rs_lane() == 0) group_max[rs_group()] = m;
  __syncthreads();
  m = group_max[0];
  for (int i = 1; i < THREADS / RS_LANES; ++i) m = rs_max_nan(m, group_max[i]);
  return m;
}

// Phase 3 for chunks chunk0 .. chunk0+n_chunks-1 and hb <= HB heads sharing their values: the chunk sums of
// e_t * v[t, col] (col < dim) and of e_t (column dim) over the positions t < n_vis, head i's e_t read at
// e[i*e_stride + t - e_base]; head i's sums of chunk c go to dst[i*dst_stride + (c - chunk0)*(dim+1) + col].
// Items (chunk, VEC neighbouring columns), one group of 32 lanes each: lane l takes the chunk's positions
// l, l+32, ..., l+224 (spec.lane_sum; RS_ATTN_CHUNK = 8 * 32), loads AT_ONCE of them at a time (VEC values of
// each, one load, and e_t of each head, all in flight together) and adds each in order to its lane values of every
// (head, column), which start from +0.0; the item of the first columns also adds e_t to each head's denominator
// lanes. Then the spec's tree over the 32 lanes, for the HB * VEC sums at once (RsTreeSlots) and for the
// denominators (rs_lane_tree). Only the positions the row sees are added (a hidden e_t * v_t would be NaN where
// a later row wrote an infinite v_t; its e_t is +0 and changes no sum): a chunk the row does not see at all
// gets sums of +0. VEC = 8 or 4 where dim is a multiple of it and vc 16-byte aligned (rs_attention_chunk_sums),
// else 1. RG > 1 (attention_values' units of rows): the same for rg <= RG consecutive rows at once, row r's head i
// its e_t at e[(r*HB + i)*e_stride + ...] and its sums at dst + r*dst_row_stride + i*dst_stride; n_vis is the
// first row's, row r sees r positions more, and adds only those (each value loaded once for every row and head).
template <int VEC, int HB, int AT_ONCE = 4, int RG = 1>
RS_DEVICE void rs_attention_chunk_items(const float* e, long long e_stride, int e_base, int hb,
                                        const float* __restrict__ vc, int dim, int n_vis, int chunk0, int n_chunks,
                                        float* dst, long long dst_stride, int rows_given, long long dst_row_stride,
                                        int col_part, int col_parts) {
  const int rg = RG == 1 ? 1 : rows_given;  // rows of the unit (RG = 1: the compiler knows it)
  constexpr int SLOTS = RG * HB * VEC;  // slot (r * HB + i) * VEC + c: row r, head i, column c of the item
  // the items of columns VEC * (g0 .. g0+groups-1): part col_part of col_parts of the dim / VEC column groups
  const int per_part = (dim / VEC + col_parts - 1) / col_parts, g0 = col_part * per_part;
  const int cols = dim + 1, groups = max(0, min(per_part, dim / VEC - g0)), lane = rs_lane();
  for (int item = rs_group(); item < n_chunks * groups; item += rs_groups()) {  // the same for the whole group
    const int chunk = item / groups, col0 = VEC * (g0 + item % groups);
    const int base = (chunk0 + chunk) * RS_ATTN_CHUNK;
    const int seen = n_vis - base;  // positions of the chunk the first row sees, if > 0 (row r sees r more)
    const float* v0 = vc + (long long)base * dim + col0;
    float acc[SLOTS], denom[RG][HB];
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) acc[s] = 0.0f;  // a lane value starts at +0.0
#pragma unroll
    for (int r = 0; r < RG; ++r) {
#pragma unroll
      for (int i = 0; i < HB; ++i) denom[r][i] = 0.0f;
    }
#pragma unroll
    for (int round = 0; round < RS_ATTN_CHUNK / (RS_LANES * AT_ONCE); ++round) {
      if (RS_LANES * AT_ONCE * round >= seen + rg - 1) break;  // the same for the whole group
      float v[AT_ONCE][VEC], et[AT_ONCE][RG][HB];
#pragma unroll
      for (int j = 0; j < AT_ONCE; ++j) {
        const int off = lane + RS_LANES * (AT_ONCE * round + j);
        const bool in = off < seen + rg - 1;  // some row sees it
        if constexpr (VEC == 4 || VEC == 8) {
#pragma unroll
          for (int h = 0; h < VEC / 4; ++h) {
            const float4 x = in ? reinterpret_cast<const float4*>(v0 + (long long)off * dim)[h]
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            v[j][4 * h] = x.x;
            v[j][4 * h + 1] = x.y;
            v[j][4 * h + 2] = x.z;
            v[j][4 * h + 3] = x.w;
          }
        } else {
          v[j][0] = in ? v0[(long long)off * dim] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < RG; ++r) {
#pragma unroll
          for (int i = 0; i < HB; ++i) {
            et[j][r][i] = off < seen + r && r < rg && i < hb ? e[(r * HB + i) * e_stride + base + off - e_base] : 0.0f;
          }
        }
      }
#pragma unroll
      for (int j = 0; j < AT_ONCE; ++j) {
#pragma unroll
        for (int r = 0; r < RG; ++r) {
          if (lane + RS_LANES * (AT_ONCE * round + j) < seen + r && r < rg) {
#pragma unroll
            for (int i = 0; i < HB; ++i) {
              if (i < hb) {  // the same for the whole block
#pragma unroll
                for (int c = 0; c < VEC; ++c) {
                  const int s = (r * HB + i) * VEC + c;
                  acc[s] = rs_add(acc[s], rs_mul(et[j][r][i], v[j][c]));
                }
                if (col0 == 0) denom[r][i] = rs_add(denom[r][i], et[j][r][i]);  // (the same for the whole group)
              }
            }
          }
        }
      }
    }
    int first = 0;
    bool owner = true;
    RsTreeSlots<SLOTS, SLOTS, RS_LANES / 2>::run(acc, lane, first, owner);
#pragma unroll
    for (int s = 0; s < RsTreeCount<SLOTS, RS_LANES / 2>::value; ++s) {
      const int slot = first + s, r = RG == 1 ? 0 : slot / (HB * VEC), i = slot / VEC % HB;
      if (owner && i < hb && r < rg) {
        dst[r * dst_row_stride + i * dst_stride + chunk * cols + col0 + slot % VEC] = acc[s];
      }
    }
    if (col0 == 0) {  // the same for the whole group
#pragma unroll
      for (int r = 0; r < RG; ++r) {
#pragma unroll
        for (int i = 0; i < HB; ++i) {
          if (i < hb && r < rg) {
            const float sum = rs_lane_tree(denom[r][i]);
            if (lane == 0) dst[r * dst_row_stride + i * dst_stride + chunk * cols + dim] = sum;
          }
        }
      }
    }
  }
}

// Phase 3 (rs_attention_chunk_items) with 16-byte loads where dim and vc allow them: items of 8 columns (two loads
// a position) for blocks of up to two heads, so that a group of a 128-wide head's 16 takes one item instead of two
// in turn; 4 columns for more heads (registers). Every thread calls it.
template <int HB, int AT_ONCE = 4, int RG = 1>
RS_DEVICE void rs_attention_chunk_sums(const float* e, long long e_stride, int e_base, int hb,
                                       const float* __restrict__ vc, int dim, int n_vis, int chunk0, int n_chunks,
                                       float* dst, long long dst_stride, int rg = 1, long long dst_row_stride = 0,
                                       int col_part = 0, int col_parts = 1) {
  const bool aligned = reinterpret_cast<unsigned long long>(vc) % 16 == 0;
  if constexpr (HB * RG <= 2) {
    if (dim % 8 == 0 && aligned) {
      rs_attention_chunk_items<8, HB, AT_ONCE, RG>(e, e_stride, e_base, hb, vc, dim, n_vis, chunk0, n_chunks, dst,
                                                  dst_stride, rg, dst_row_stride, col_part, col_parts);
      return;
    }
  }
  if (dim % 4 == 0 && aligned) {
    rs_attention_chunk_items<4, HB, AT_ONCE, RG>(e, e_stride, e_base, hb, vc, dim, n_vis, chunk0, n_chunks, dst,
                                                dst_stride, rg, dst_row_stride, col_part, col_parts);
  } else {
    rs_attention_chunk_items<1, HB, AT_ONCE, RG>(e, e_stride, e_base, hb, vc, dim, n_vis, chunk0, n_chunks, dst,
                                                dst_stride, rg, dst_row_stride, col_part, col_parts);
  }
}

// Phases 4 and 5 for hb heads rh0 .. rh0+hb-1 (row * heads + head): head i's chunk sums
// parts[i*head_stride + c*(dim+1) + col], c < n_chunks, added in order to +0.0 (spec.chunked_sum), then
// num / denom to out, and, with xq, each head's blocks of 32 outputs quantized, one per group of 32 lanes, one
// value per lane (rs_quantize_block_lanes): block b of head h is block h * dim/32 + b of the row's
// [heads*dim]. Each thread adds up the columns it divides, the denominator's included (every lane the same
// sums in the same order), so no thread waits for another: with xq a group computes its block's 32 outputs and
// quantizes them at once. `coherent`: parts were written by other blocks of this kernel (read from L2, past this
// multiprocessor's L1). Every thread calls it, after a barrier that follows the writes of parts.
RS_DEVICE float rs_attention_output(const float* parts, bool coherent, int n_chunks, int dim, int d) {
  float num = 0.0f, denom = 0.0f;
  for (int chunk = 0; chunk < n_chunks; ++chunk) {
    const float* p = parts + chunk * (dim + 1);
    num = rs_add(num, coherent ? rs_load_coherent(p + d) : p[d]);
    denom = rs_add(denom, coherent ? rs_load_coherent(p + dim) : p[dim]);
  }
  return rs_div(num, denom);
}

template <int THREADS>
RS_DEVICE void rs_attention_finish(const float* parts, long long head_stride, int hb, bool coherent, int n_chunks,
                                   int dim, long long rh0, float* __restrict__ out, signed char* __restrict__ xq,
                                   unsigned short* __restrict__ xd) {
  if (xq) {  // (dim is a multiple of 32)
    const int per_head = dim / RS_QK;
    for (int b = rs_group(); b < hb * per_head; b += rs_groups()) {  // the same for the whole group
      const int i = b / per_head, d = (b % per_head) * RS_QK + rs_lane();
      const float o = rs_attention_output(parts + i * head_stride, coherent, n_chunks, dim, d);
      out[(rh0 + i) * dim + d] = o;
      const long long block = (rh0 + i) * per_head + b % per_head;
      rs_quantize_block_lanes(o, xq + block * RS_QK, xd + block);
    }
  } else {
    for (int w = threadIdx.x; w < hb * dim; w += THREADS) {
      const int i = w / dim, d = w % dim;
      out[(rh0 + i) * dim + d] = rs_attention_output(parts + i * head_stride, coherent, n_chunks, dim, d);
    }
  }
}

// ----------------------------------------------------------------------------------------- attention
// q float32 [rows, heads, dim]; k_cache, v_cache float32 [kv_heads, cache_len, dim] with positions
// 0 .. pos0+rows-1 written; pos int32 [1] = pos0; e_buf float32 [rows*heads, cache_len]; part_buf float32
// [rows*heads, ceil(cache_len / 256), dim+1]; out float32 [rows, heads, dim]; xq int8 [rows, heads*dim] and
// xd fp16 [rows, heads*dim/32], or both null (then dim need not be a multiple of 32). Grid: rows*heads blocks.
// `live`: only the first live[0] rows, or all where null (rs_live_rows).
// MAXD: a multiple of 32 >= dim, at most RS_ATTN_MAX_DIM (the wrapper picks the smallest of 64, 128, 256,
// 512): a lane's share of q and of a key is MAXD / 32 registers, with no loads or products for lanes past
// dim wasted on a larger bound. THREADS: 512, 256 or 128 (each block may use up to 128 registers a thread).
template <int MAXD, int THREADS>
__global__ void RS_ATTN_BOUNDS(THREADS, MAXD <= 128)
attention(const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
          const int* __restrict__ pos, int rows, int heads, int kv_heads, int dim, int cache_len, float scale,
          float* __restrict__ e_buf, float* __restrict__ part_buf, float* __restrict__ out,
          signed char* __restrict__ xq, unsigned short* __restrict__ xd, const int* __restrict__ live) {
  const int rh = blockIdx.x;  // = row * heads + head
  const int row = rh / heads, head = rh % heads;
  const int group_size = heads / kv_heads;
  const int kv_head = head / group_size;
  const float* kc = k_cache + (long long)kv_head * cache_len * dim;
  const float* vc = v_cache + (long long)kv_head * cache_len * dim;
  if (row >= rs_live_rows(live, rows)) return;  // the whole block (n_pos stays that of all the rows)
  rs_attention_prefetch(kc, vc, pos, cache_len, dim, 0, RS_ATTN_SHARED_POS, rows * group_size,
                        row * group_size + head % group_size, THREADS);
  rs_kernel_begin();
  __shared__ float group_max[THREADS / RS_LANES];
  __shared__ float e_shared[RS_ATTN_SHARED_POS];
  __shared__ float parts_shared[RS_ATTN_SHARED_PARTS];
  const int pos0 = pos[0];
  const int n_pos = pos0 + rows;   // positions every row's sums run over
  const int n_vis = pos0 + row + 1;  // positions this row sees
  const bool small = n_pos <= RS_ATTN_SHARED_POS;  // the same for the whole block
  float* e = small ? e_shared : e_buf + (long long)rh * cache_len;

  // 1. scores, one position per group of 32 lanes; max over t
  float m[1];
  rs_attention_scores<MAXD, 1>(q + (long long)rh * dim, 1, kc, dim, scale, 0, n_vis, e, 0, 0, m);
  m[0] = rs_attention_block_max<THREADS>(m[0], group_max);

  // 2. e_t = exp(s_t - m) for the positions the row sees
  for (int t = threadIdx.x; t < n_vis; t += THREADS) e[t] = refspec_exp(rs_sub(e[t], m[0]));
  __syncthreads();

  // 3. chunk sums of e_t * v[t, col] and of e_t
  const int n_chunks = (n_pos + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  const int max_chunks = (cache_len + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  float* parts = small ? parts_shared : part_buf + (long long)rh * max_chunks * (dim + 1);
  rs_attention_chunk_sums<1>(e, 0, 0, 1, vc, dim, n_vis, 0, n_chunks, parts, 0);
  __syncthreads();

  // 4, 5. the chunks' sums in order, num / denom, quantized
  rs_attention_finish<THREADS>(parts, 0, 1, false, n_chunks, dim, rh, out, xq, xd);
}

// ------------------------------------------------------------------------- attention_scores, attention_values
// The same attention in two kernels, spread over positions, and each block taking `per` <= RS_ATTN_HEADS query heads
// that share one kv head (their keys and values read once for all of them): attention_scores computes the scores of
// slices of slice_len positions (phase 1) and each slice's max; attention_values, one block per chunk of 256
// positions, takes the max of the slices' maxes (m), e_t for its chunk (phase 2) and the chunk sums (phase 3); the last
// of a unit's chunk blocks to finish adds the chunks in order and divides (phases 4, 5). Same operations, same bits:
// each score, e_t and chunk sum is computed as in `attention`, and max is exact in any order. A unit is (row, kv head,
// part): part p of a kv head's group of query heads is heads per*p .. per*p+per-1 of the group (fewer in the last
// part). A launch's grid depends on the cache length only (a captured pass serves every position): blocks past the
// positions a row sees end at once, and a block of attention_scores takes every slice_blocks-th slice after its first
// where a row has more slices than that. slice_len is the positions of a slice (any length gives the same bits; the
// backend takes 64, 128 or 256: GpuBackend.attention_slice): a block pays a slice's end (its max across groups, two
// barriers) once for slice_len / 64 rounds of its key loop, and has fewer slices to take where the cache is short.
#define RS_ATTN_SCORE_THREADS 256  // threads per block of attention_scores

// Where a unit's heads are: its row, kv head, part (of `parts`), first head h0 and number of heads hb.
struct RsAttnUnit {
  int row, kv_head, part, parts, h0, hb;
  RS_MEMBER RsAttnUnit(int unit, int heads, int kv_heads, int per) {
    const int group_size = heads / kv_heads;
    parts = (group_size + per - 1) / per;
    row = unit / (kv_heads * parts);
    kv_head = unit / parts % kv_heads;
    part = unit % parts;
    h0 = kv_head * group_size + part * per;
    hb = min(per, group_size - part * per);
  }
};

// e_buf float32 [rows*heads, cache_len]: the scores; max_buf float32 [rows*heads, ceil(cache_len / slice_len)];
// arrivals int32 [units], set to 0 here for attention_values (which takes the same units). RG: rows a unit, as
// attention_values' (each key loaded once for the query heads of both rows; a row's positions as its own). Grid:
// units*slice_blocks blocks, units = ceil(rows / RG) * kv_heads * ceil(heads / kv_heads / per).
template <int MAXD, int RG>
__global__ void RS_ATTN_BOUNDS(RS_ATTN_SCORE_THREADS, false)  // (one block: else nvcc caps it at 64 registers)
attention_scores(const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
                 const int* __restrict__ pos, int rows, int heads, int kv_heads, int per, int dim, int cache_len,
                 float scale, int slice_len, int slice_blocks, float* __restrict__ e_buf, float* __restrict__ max_buf,
                 int* __restrict__ arrivals, const int* __restrict__ live) {
  const int unit = blockIdx.x / slice_blocks, first = blockIdx.x % slice_blocks;
  const RsAttnUnit u(unit, heads, kv_heads, per);  // u.row: the group of rows
  const int slices = (cache_len + slice_len - 1) / slice_len;
  const float* kc = k_cache + (long long)u.kv_head * cache_len * dim;
  const float* vc = v_cache + (long long)u.kv_head * cache_len * dim;
  const int row0 = u.row * RG;
  if (row0 >= rs_live_rows(live, rows)) return;  // the whole block (attention_values skips the unit too)
  rs_attention_prefetch(kc, vc, pos, cache_len, dim, first * slice_len, (first + 1) * slice_len,
                        (rows + RG - 1) / RG * u.parts, u.row * u.parts + u.part, RS_ATTN_SCORE_THREADS);
  rs_kernel_begin();
  __shared__ float group_max[RG * RS_ATTN_HEADS][RS_ATTN_SCORE_THREADS / RS_LANES];
  if (first == 0 && threadIdx.x == 0) arrivals[unit] = 0;
  const int rg = RG == 1 ? 1 : min(RG, rs_live_rows(live, rows) - row0);  // rows of the unit
  const int n_vis = pos[0] + row0 + 1;  // positions the unit's first row sees (row r: r more)
  const long long rh0 = (long long)row0 * heads + u.h0;  // row r's head i: rh0 + r * heads + i
  using RowQueries = float[RS_ATTN_HEADS][MAXD / RS_LANES];  // one row's heads: RS_ATTN_HEADS slots of qreg
  float qreg[RG * RS_ATTN_HEADS][MAXD / RS_LANES];
#pragma unroll
  for (int r = 0; r < RG; ++r) {
    rs_attention_load_q<MAXD, RS_ATTN_HEADS>(q + (rh0 + (long long)r * heads) * dim, r < rg ? u.hb : 0, dim,
                                             *reinterpret_cast<RowQueries*>(qreg[r * RS_ATTN_HEADS]));
  }
  for (int slice = first; slice * slice_len < n_vis + rg - 1; slice += slice_blocks) {  // the same for the whole block
    const int t_begin = slice * slice_len, t_stop = t_begin + slice_len, t_end = min(t_stop, n_vis);
    float m[RG * RS_ATTN_HEADS];
    rs_attention_scores_of<MAXD, RS_ATTN_HEADS, RG>(qreg, u.hb, kc, dim, scale, t_begin, t_end, e_buf + rh0 * cache_len,
                                                    cache_len, 0, m, rg, t_stop, (long long)heads * cache_len);
#pragma unroll
    for (int i = 0; i < RG * RS_ATTN_HEADS; ++i) {  // each group's max (its lanes hold the same) of each slot
      if (rs_lane() == 0) group_max[i][rs_group()] = m[i];
    }
    __syncthreads();
    if (threadIdx.x < rg * u.hb) {  // the slice's max of one row's head (rs_max_nan: exact in any order)
      const int r = threadIdx.x / u.hb, i = threadIdx.x % u.hb, slot = r * RS_ATTN_HEADS + i;
      float mi = group_max[slot][0];
      for (int g = 1; g < RS_ATTN_SCORE_THREADS / RS_LANES; ++g) mi = rs_max_nan(mi, group_max[slot][g]);
      max_buf[(rh0 + (long long)r * heads + i) * slices + slice] = mi;
    }
    __syncthreads();
  }
}

// v_cache, pos, rows .. cache_len, slice_len, e_buf, max_buf as for attention_scores (which ran just before);
// part_buf float32 [rows*heads, ceil(cache_len / 256), dim+1]; arrivals int32 [units]; out, xq, xd as for
// `attention`. Grid: units*ceil(cache_len / 256) blocks of THREADS threads (at most 256 on HIP: gfx906 spills
// at 512).
// PAIRED (NVIDIA only; the backend launches it where the unpaired grid would take more than two waves,
// GpuBackend.attention_values_paired): twice as many blocks a multiprocessor (two of 512 threads: at most 64
// registers a thread, no spills) with phase 3 loading one position a lane at a time instead of 4 (the same
// additions in the same order). Over long caches a pass of several rows launches units x chunks blocks, and at 116
// registers a multiprocessor held one block of 512 (ncu at 8 rows over 4000 positions: 8.2 waves, 25 % occupancy;
// tests/results/ncu_attention_spread_r8_pos4000_h200.txt); a short grid keeps the registers (one row over 4000
// positions, one wave: 20.2 us a layer, 24.9 paired).
// RG (rows a unit): a unit is (group of RG consecutive rows, kv head, part), its units numbered as
// RsAttnUnit numbers (row, kv head, part) with the group in place of the row; each value the block loads serves
// every (row, head) of the unit, row r of the group adding only the positions it sees (one more than the row before).
// Grid: units*ceil(cache_len / 256)*col_parts blocks with units = ceil(rows / RG) * kv_heads * ceil(heads / kv_heads
// / per). col_parts: the blocks of a (unit, chunk), each taking that part of the columns' items (a column's sums
// are its own: any split gives the same bits), so that a launch of few units and chunks fills the GPU.
template <int THREADS, bool PAIRED, int RG>
__global__ void RS_ATTN_LAUNCH(THREADS, (PAIRED ? 2 : 1) * RS_ATTN_MAX_THREADS / THREADS)
attention_values(const float* __restrict__ v_cache, const int* __restrict__ pos, int rows, int heads, int kv_heads,
                 int per, int dim, int cache_len, int slice_len, const float* __restrict__ e_buf,
                 const float* __restrict__ max_buf, float* part_buf, int* arrivals, float* __restrict__ out,
                 signed char* __restrict__ xq, unsigned short* __restrict__ xd, const int* __restrict__ live,
                 int col_parts_given) {
  const int col_parts = PAIRED ? 1 : col_parts_given;  // (the backend pairs only launches of more than one wave)
  const int chunks = (cache_len + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  const int unit = blockIdx.x / (chunks * col_parts), chunk = blockIdx.x / col_parts % chunks;
  const int col_part = blockIdx.x % col_parts;
  const RsAttnUnit u(unit, heads, kv_heads, per);  // u.row: the group of rows
  const int row0 = u.row * RG;
  if (row0 >= rs_live_rows(live, rows)) return;  // the whole block
  const int rg = RG == 1 ? 1 : min(RG, rs_live_rows(live, rows) - row0);  // rows of the unit
  rs_kernel_begin();
  __shared__ float m_head[RG][RS_ATTN_HEADS];
  __shared__ float e_chunk[RG][RS_ATTN_HEADS][RS_ATTN_CHUNK];
  __shared__ float parts_chunk[RG][RS_ATTN_HEADS][RS_ATTN_MAX_DIM + 1];
  __shared__ int last;
  const int n_vis = pos[0] + row0 + 1;  // positions the unit's first row sees (row r: r more)
  const int base = chunk * RS_ATTN_CHUNK;
  if (base >= n_vis + rg - 1) return;  // the whole block
  const float* vc = v_cache + (long long)u.kv_head * cache_len * dim;
  const long long rh0 = (long long)row0 * heads + u.h0;  // row r's head i: rh0 + r * heads + i
  const int slices = (cache_len + slice_len - 1) / slice_len;
  const int active = (n_vis + rg - 1 + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;  // chunks the unit's last row sees
  const bool alone = active == 1 && col_parts == 1;  // the unit's only block: its sums stay in shared memory

  for (int s = rs_group(); s < rg * u.hb; s += rs_groups()) {  // (row, head) s: m, the max of its slices' maxes
    const int r = s / u.hb, i = s % u.hb;
    const long long rh = rh0 + (long long)r * heads + i;
    float m = rs_as_float((int)0xff800000);
    for (int sl = rs_lane(); sl * slice_len < n_vis + r; sl += RS_LANES) m = rs_max_nan(m, max_buf[rh * slices + sl]);
#pragma unroll
    for (int offset = RS_LANES / 2; offset >= 1; offset /= 2) m = rs_max_nan(m, rs_shfl_xor(m, offset));
    if (rs_lane() == 0) m_head[r][i] = m;
  }
  __syncthreads();
  const int len = min(RS_ATTN_CHUNK, n_vis + rg - 1 - base);  // positions of the chunk the last row sees
  for (int w = threadIdx.x; w < rg * u.hb * len; w += THREADS) {
    const int r = w / (u.hb * len), i = w / len % u.hb, t = w % len;
    if (RG == 1 || t < n_vis + r - base) {  // the positions of the chunk row r sees
      const long long rh = rh0 + (long long)r * heads + i;
      e_chunk[r][i][t] = refspec_exp(rs_sub(e_buf[rh * cache_len + base + t], m_head[r][i]));
    }
  }
  __syncthreads();
  // row r's head i's chunk sums: alone, in parts_chunk[r][i]; else at parts + r * row_stride + i * stride
  float* parts = part_buf + rh0 * chunks * (dim + 1);
  const long long stride = alone ? RS_ATTN_MAX_DIM + 1 : (long long)chunks * (dim + 1);
  const long long row_stride = alone ? RS_ATTN_HEADS * (RS_ATTN_MAX_DIM + 1) : heads * stride;
  rs_attention_chunk_sums<RS_ATTN_HEADS, (PAIRED || RG > 2 ? 1 : RG > 1 ? 2 : 4), RG>(
      &e_chunk[0][0][0], RS_ATTN_CHUNK, base, u.hb, vc, dim, n_vis, chunk, 1,
      alone ? &parts_chunk[0][0][0] : parts + chunk * (dim + 1), stride, rg, row_stride, col_part, col_parts);
  __syncthreads();
  if (!alone) {  // the last block of the unit to arrive adds the chunk sums up
    __threadfence();  // this block's chunk sums are visible to the block that adds them up
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&arrivals[unit], 1) + 1 == active * col_parts;
    __syncthreads();
    if (!last) return;
    __threadfence();
  }
  for (int r = 0; r < rg; ++r) {  // (a row's chunks past those it sees hold sums of +0: they change nothing)
    rs_attention_finish<THREADS>((alone ? &parts_chunk[0][0][0] : parts) + r * row_stride, stride, u.hb, !alone,
                                 active, dim, rh0 + (long long)r * heads, out, xq, xd);
  }
}

// ---------------------------------------------------------------------------------------------- attention_heads
// `attention` with a block per unit (row, kv head, part; RsAttnUnit) instead of per (row, head): the unit's hb <=
// RS_ATTN_HEADS query heads share each key and value the block loads (phases 1 and 3 as attention_scores and
// attention_values run them, for all the row's positions at once), and each head's phases are `attention`'s. For
// passes of several rows over short caches: rows * kv_heads blocks instead of rows * heads, each reading its
// keys and values once. Same operations, same bits: a score, e_t, chunk sum and output are each computed as in
// `attention`, and the max is exact in any order. Up to RS_ATTN_HEADS_SHARED_POS positions the scores and chunk
// sums stay in shared memory, beyond that in the scratch buffers (the same as `attention`'s, same layout).
#define RS_ATTN_HEADS_SHARED_POS 512
#define RS_ATTN_HEADS_SHARED_CHUNKS (RS_ATTN_HEADS_SHARED_POS / RS_ATTN_CHUNK)

// q, k_cache, v_cache, pos, e_buf, part_buf, out, xq, xd, live as for `attention`; per: query heads a unit, at
// most HB (<= RS_ATTN_HEADS; the backend compiles HB = per: the code and registers of only the heads a block has).
// Grid: rows * kv_heads * ceil(heads / kv_heads / per) blocks of THREADS threads.
template <int MAXD, int THREADS, int HB>
__global__ void RS_ATTN_BOUNDS(THREADS, MAXD <= 128)
attention_heads(const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
                const int* __restrict__ pos, int rows, int heads, int kv_heads, int per, int dim, int cache_len,
                float scale, float* __restrict__ e_buf, float* __restrict__ part_buf, float* __restrict__ out,
                signed char* __restrict__ xq, unsigned short* __restrict__ xd, const int* __restrict__ live) {
  const int unit = blockIdx.x;
  const RsAttnUnit u(unit, heads, kv_heads, per);
  const float* kc = k_cache + (long long)u.kv_head * cache_len * dim;
  const float* vc = v_cache + (long long)u.kv_head * cache_len * dim;
  if (u.row >= rs_live_rows(live, rows)) return;  // the whole block
  rs_attention_prefetch(kc, vc, pos, cache_len, dim, 0, RS_ATTN_HEADS_SHARED_POS, rows * u.parts,
                        u.row * u.parts + u.part, THREADS);
  rs_kernel_begin();
  __shared__ float group_max[HB][THREADS / RS_LANES];
  __shared__ float e_shared[HB][RS_ATTN_HEADS_SHARED_POS];
  __shared__ float parts_shared[HB][RS_ATTN_HEADS_SHARED_CHUNKS * (RS_ATTN_MAX_DIM + 1)];
  const int pos0 = pos[0];
  const int n_pos = pos0 + rows;       // positions every row's sums run over
  const int n_vis = pos0 + u.row + 1;  // positions this row sees
  const bool small = n_pos <= RS_ATTN_HEADS_SHARED_POS;  // the same for the whole block
  const long long rh0 = (long long)u.row * heads + u.h0;
  const int max_chunks = (cache_len + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  float* e = small ? &e_shared[0][0] : e_buf + rh0 * cache_len;
  const long long e_stride = small ? RS_ATTN_HEADS_SHARED_POS : cache_len;
  float* parts = small ? &parts_shared[0][0] : part_buf + rh0 * max_chunks * (dim + 1);
  const long long parts_stride = small ? RS_ATTN_HEADS_SHARED_CHUNKS * (RS_ATTN_MAX_DIM + 1)
                                       : (long long)max_chunks * (dim + 1);

  // 1. scores of every head, each key loaded once; each head's max over t
  float m[HB];
  rs_attention_scores<MAXD, HB>(q + rh0 * dim, u.hb, kc, dim, scale, 0, n_vis, e, e_stride, 0, m);
#pragma unroll
  for (int i = 0; i < HB; ++i) {  // each group's max (its lanes hold the same) of each head
    if (rs_lane() == 0) group_max[i][rs_group()] = m[i];
  }
  __syncthreads();

  // 2. e_t = exp(s_t - m) for the positions the row sees, m head i's max over its groups' (rs_max_nan: exact in any
  // order), which each thread takes for itself (no barrier)
  for (int w = threadIdx.x; w < u.hb * n_vis; w += THREADS) {
    const int i = w / n_vis, t = w % n_vis;
    float mi = group_max[i][0];
    for (int g = 1; g < THREADS / RS_LANES; ++g) mi = rs_max_nan(mi, group_max[i][g]);
    e[i * e_stride + t] = refspec_exp(rs_sub(e[i * e_stride + t], mi));
  }
  __syncthreads();

  // 3. chunk sums of e_t * v[t, col] (each value loaded once for every head) and of e_t
  const int n_chunks = (n_pos + RS_ATTN_CHUNK - 1) / RS_ATTN_CHUNK;
  rs_attention_chunk_sums<HB>(e, e_stride, 0, u.hb, vc, dim, n_vis, 0, n_chunks, parts, parts_stride);
  __syncthreads();

  // 4, 5. each head's chunks' sums in order, num / denom, quantized
  rs_attention_finish<THREADS>(parts, parts_stride, u.hb, false, n_chunks, dim, rh0, out, xq, xd);
}
