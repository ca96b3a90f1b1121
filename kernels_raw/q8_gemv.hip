// Q8_0 GEMV over R activation rows: the twin of spec.q8_gemv (SPEC.md, "Q8_0 GEMV").
//
//   y[r, n] = lane_sum over blocks b of (f32(wd[n, b]) * f32(xd[r, b])) * f32(dot(wq[n, b, :], xq[r, b, :]))
//
// where lane l of the sum takes blocks l, l+32, l+64, ... in that order, starting from +0.0, and the 32 lane
// values meet in the spec's tree. Weights: int8 wq [N, K] and fp16 wd [N, K/32] (refspec.model.Q8Matrix);
// activations: int8 xq [R, K] and fp16 xd [R, K/32] (spec.quantize_q8_0); y: float32 [R, N].
//
// Mapping. A group of 32 threads (rs_group) owns NR consecutive weight rows and RP activation rows; thread
// `lane` of the group is the spec's lane `lane` for all of them, so it keeps NR*RP sums and adds block
// lane+32j to each in increasing j, exactly the spec's per-lane sequence. Each weight block (32 bytes, two
// 16-byte loads) is loaded once and used for RP activation rows; each activation block is used for NR weight
// rows. SPLIT groups of a thread block share the same NR weight rows, each taking RP of the rows (weights
// then come to the second group from the cache): fewer sums per thread, more threads. The lane values meet in
// the spec's tree (RsTreeSlots). Nothing depends on the number of rows, on where a row sits in the batch or on
// the mapping: every output is the same sequence of operations.
//
// Template parameters: RP activation rows per group, NR weight rows per group, SPLIT groups per weight rows,
// OCC thread blocks per multiprocessor asked of the CUDA compiler (__launch_bounds__; it caps registers).
// Two ways of reading the activations, the same arithmetic:
//   q8_gemv        reads them straight from global memory (cached);
//   q8_gemv_staged stages each 32-block chunk of all rows in shared memory, laid out so that each 16-byte
//                  read of a group is contiguous, and shares it among the block's groups.
#include "portable.h"
#include "lane_sum.h"

#define RS_QK 32                  // values per Q8_0 block (refspec.model.QK8_0)
#define RS_GEMV_THREADS 128       // threads per block of q8_gemv: 4 groups of 32
#define RS_GEMV_STAGED_THREADS 256  // threads per block of q8_gemv_staged: 8 groups of 32
#define RS_DOT_BIAS 0x4B400000    // the bits of 1.5 * 2**23 (see rs_block_dot)
#if defined(RS_HIP)
#define RS_GEMV_BOUNDS(threads, occ) __launch_bounds__(threads)  // HIP's second argument means something else
#else
#define RS_GEMV_BOUNDS(threads, occ) __launch_bounds__(threads, occ)
#endif

// The exact int8 dot product of one block (two 16-byte halves each of weights and activations), as float32.
// The dp4a chain starts from the bits of 1.5 * 2**23, whose ulp is 1: adding an integer |d| < 2**22 to those
// bits gives the float 1.5 * 2**23 + d exactly (|d| <= 32 * 128 * 128 = 2**19), and subtracting 1.5 * 2**23
// is exact. One float subtraction instead of an int-to-float conversion, same value as spec.block_dots.
RS_DEVICE float rs_block_dot(const int4 w0, const int4 w1, const int4 x0, const int4 x1) {
  int s = RS_DOT_BIAS;
  s = rs_dot4(w0.x, x0.x, s);
  s = rs_dot4(w0.y, x0.y, s);
  s = rs_dot4(w0.z, x0.z, s);
  s = rs_dot4(w0.w, x0.w, s);
  s = rs_dot4(w1.x, x1.x, s);
  s = rs_dot4(w1.y, x1.y, s);
  s = rs_dot4(w1.z, x1.z, s);
  s = rs_dot4(w1.w, x1.w, s);
  return rs_sub(rs_as_float(s), 0x1.8p+23f);
}

// One lane's step of the spec's sum: acc + (f32(wd) * f32(xd)) * dot, in that order (spec.scale_and_reduce).
RS_DEVICE float rs_gemv_step(float acc, float wscale, float xscale, float dot) {
  return rs_add(acc, rs_mul(rs_mul(wscale, xscale), dot));
}

// Final tree and store of a group's NR x RP sums: slot i*RP + r is weight row row0 + i, activation row r0 + r.
// With `base` (a float32 [rows, n] array, or null) the store is base + sum, spec.add's one rounding: the
// residual add of the forward pass done in the GEMV's epilogue, same bits as a separate add.
template <int RP, int NR>
RS_DEVICE void rs_gemv_finish(float (&acc)[NR][RP], long long row0, int n, int r0, int rows, float* __restrict__ y,
                              const float* base) {
  float v[NR * RP];
#pragma unroll
  for (int i = 0; i < NR; ++i) {
#pragma unroll
    for (int r = 0; r < RP; ++r) v[i * RP + r] = acc[i][r];
  }
  int first = 0;
  bool owner = true;
  RsTreeSlots<NR * RP, NR * RP, RS_LANES / 2>::run(v, rs_lane(), first, owner);
#pragma unroll
  for (int i = 0; i < RsTreeCount<NR * RP, RS_LANES / 2>::value; ++i) {
    if (owner) {
      const int slot = first + i;
      const long long row = row0 + slot / RP;
      const int r = r0 + slot % RP;
      if (row < n && r < rows) {
        const long long e = (long long)r * n + row;
        y[e] = base ? rs_add(base[e], v[i]) : v[i];
      }
    }
  }
}

// One lane's blocks b of a group's NR weight rows, in registers: block b of row i is 32 bytes at
// wq + row*k + 32*b, its scale wd[row*nb + b]. Rows past the end are read as the last row (a valid address)
// and never stored.
template <int NR>
struct RsWeightBlocks {
  int4 lo[NR], hi[NR];
  float scale[NR];

  RS_MEMBER void load(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
                      long long row0, int n, int k, int b) {
    const int nb = k / RS_QK;
#pragma unroll
    for (int i = 0; i < NR; ++i) {
      const long long row = row0 + i < n ? row0 + i : n - 1;
      const int4* p = (const int4*)(wq + row * k + (long long)b * RS_QK);
      lo[i] = p[0];
      hi[i] = p[1];
      scale[i] = rs_half_to_float(wd[row * nb + b]);
    }
  }
};

// Where a group works: its weight rows row0 .. row0+NR-1 and activation rows r0 .. r0+RP-1.
template <int NR, int SPLIT>
RS_DEVICE void rs_gemv_place(int rp, long long& row0, int& r0) {
  const int groups = rs_groups() / SPLIT;  // weight-row groups per thread block
  row0 = ((long long)blockIdx.x * groups + rs_group() / SPLIT) * NR;
  r0 = (rs_group() % SPLIT) * rp;
}

// ------------------------------------------------------------------------------------------ q8_gemv
// A group's sums over all its blocks, then the tree and the store, for RP activation rows r0 .. r0+RP-1 (rows
// past `rows`: computed, never stored). `ring` holds the lane's first DEPTH weight blocks (blocks lane,
// lane+32, ..., loaded by the caller); the load of block b + 32*DEPTH goes out as block b is computed, so
// DEPTH rounds of the lanes' weights are in flight. The adds are the spec's whatever DEPTH: block lane+32j in
// increasing j.
template <int RP, int NR, int DEPTH>
RS_DEVICE void rs_gemv_rows(RsWeightBlocks<NR> (&ring)[DEPTH], const signed char* __restrict__ wq,
                            const unsigned short* __restrict__ wd, const signed char* __restrict__ xq,
                            const unsigned short* __restrict__ xd, float* __restrict__ y, long long row0, int n,
                            int k, int r0, int rows, const float* base) {
  const int nb = k / RS_QK;
  float acc[NR][RP];
#pragma unroll
  for (int i = 0; i < NR; ++i) {
#pragma unroll
    for (int r = 0; r < RP; ++r) acc[i][r] = 0.0f;  // a lane value starts at +0.0
  }

  for (int first = rs_lane(); first < nb; first += DEPTH * RS_LANES) {
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      const int b = first + d * RS_LANES;
      if (d > 0 && b >= nb) break;
      const RsWeightBlocks<NR> w = ring[d];
      if (b + DEPTH * RS_LANES < nb) ring[d].load(wq, wd, row0, n, k, b + DEPTH * RS_LANES);  // in flight
#pragma unroll
      for (int r = 0; r < RP; ++r) {
        const int rr = r0 + r < rows ? r0 + r : rows - 1;  // rows past the end: computed, never stored
        const int4* px = (const int4*)(xq + (long long)rr * k + (long long)b * RS_QK);
        const int4 x0 = px[0], x1 = px[1];
        const float xs = rs_half_to_float(xd[rr * nb + b]);
#pragma unroll
        for (int i = 0; i < NR; ++i) {
          acc[i][r] = rs_gemv_step(acc[i][r], w.scale[i], xs, rs_block_dot(w.lo[i], w.hi[i], x0, x1));
        }
      }
    }
  }
  rs_gemv_finish<RP, NR>(acc, row0, n, r0, rows, y, base);
}

// A lane's first DEPTH weight blocks (lane, lane+32, ...) of its group's rows, where they exist: weights only.
template <int NR, int DEPTH>
RS_DEVICE void rs_gemv_first_blocks(RsWeightBlocks<NR> (&ring)[DEPTH], const signed char* __restrict__ wq,
                                    const unsigned short* __restrict__ wd, long long row0, int n, int k) {
#pragma unroll
  for (int d = 0; d < DEPTH; ++d) {
    const int b = rs_lane() + d * RS_LANES;
    if (row0 < n && b < k / RS_QK) ring[d].load(wq, wd, row0, n, k, b);
  }
}

// Grid: ceil(N / (NR * RS_GEMV_THREADS/32 / SPLIT)) blocks of RS_GEMV_THREADS threads, rows <= RP * SPLIT.
// Needs K % 32 == 0 and 16-byte aligned wq and xq (the wrapper checks). y = base + W x when base is not null
// (base may not overlap y). With `live` (rs_live_rows) only the first *live rows are computed and stored; a
// group left with one of its rows takes the one-row path, a group of more than 8 left with 8 or fewer the 8-row
// path (same operations for each row, same bits). DEPTH: rounds of weight blocks in flight per lane (1 unless a
// matrix gives too few thread blocks to keep the memory busy; refspec.gpu.GemvConfig.depth).
template <int RP, int NR, int SPLIT, int OCC, int DEPTH = 1>
__global__ void RS_GEMV_BOUNDS(RS_GEMV_THREADS, OCC)
q8_gemv(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
        const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
        float* __restrict__ y, int n, int k, int rows, const float* base, const int* __restrict__ live) {
  long long row0;
  int r0;
  rs_gemv_place<NR, SPLIT>(RP, row0, r0);
  // The first weight blocks are loaded before rs_kernel_begin (portable.h): weights are no kernel's output,
  // so they come in while the kernel before this one finishes.
  RsWeightBlocks<NR> ring[DEPTH];
  rs_gemv_first_blocks<NR, DEPTH>(ring, wq, wd, row0, n, k);
  rows = rs_live_rows(live, rows);
  rs_kernel_begin();
  if (row0 >= n || r0 >= rows) return;  // the whole group leaves together
  if (RP > 1 && rows - r0 == 1) {
    rs_gemv_rows<1, NR, DEPTH>(ring, wq, wd, xq, xd, y, row0, n, k, r0, rows, base);
  } else if (RP > 8 && rows - r0 <= 8) {
    rs_gemv_rows<(RP > 8 ? 8 : RP), NR, DEPTH>(ring, wq, wd, xq, xd, y, row0, n, k, r0, rows, base);
  } else {
    rs_gemv_rows<RP, NR, DEPTH>(ring, wq, wd, xq, xd, y, row0, n, k, r0, rows, base);
  }
}

// ----------------------------------------------------------------------------------- q8_gemv_staged
// The activations of a chunk of 32 blocks (lane j of every group takes block 32c + j) are staged in shared
// memory, double-buffered: quants as [row][half][32 blocks][16 bytes] so that a group's 16-byte reads are
// contiguous, scales already converted to float32 [row][32]. One barrier per chunk.
template <int RS>
struct RsStagedChunk {
  int4 q[RS][2][RS_LANES];
  float scale[RS][RS_LANES];
};

template <int RS>
struct RsStagingRegs {
  // RS * 64 quant units of 16 bytes and RS * 32 scales per chunk, spread over the block's threads.
  static constexpr int Q_UNITS = (RS * 2 * RS_LANES + RS_GEMV_STAGED_THREADS - 1) / RS_GEMV_STAGED_THREADS;
  static constexpr int S_UNITS = (RS * RS_LANES + RS_GEMV_STAGED_THREADS - 1) / RS_GEMV_STAGED_THREADS;
  int4 q[Q_UNITS];
  float s[S_UNITS];

  RS_MEMBER void load(const signed char* __restrict__ xq, const unsigned short* __restrict__ xd, int k, int rows,
                      int chunk) {
    const int nb = k / RS_QK;
#pragma unroll
    for (int u = 0; u < Q_UNITS; ++u) {
      const int unit = threadIdx.x + u * RS_GEMV_STAGED_THREADS;  // unit = (r * 32 + block) * 2 + half
      const int r = unit / (2 * RS_LANES), block = (unit / 2) % RS_LANES, half = unit % 2;
      const int b = chunk * RS_LANES + block;
      if (r < rows && b < nb) q[u] = *(const int4*)(xq + (long long)r * k + (long long)b * RS_QK + 16 * half);
    }
#pragma unroll
    for (int u = 0; u < S_UNITS; ++u) {
      const int unit = threadIdx.x + u * RS_GEMV_STAGED_THREADS;  // unit = r * 32 + block
      const int r = unit / RS_LANES, b = chunk * RS_LANES + unit % RS_LANES;
      if (r < rows && b < nb) s[u] = rs_half_to_float(xd[r * nb + b]);
    }
  }

  RS_MEMBER void store(RsStagedChunk<RS>& dst, int k, int rows, int chunk) const {
    const int nb = k / RS_QK;
#pragma unroll
    for (int u = 0; u < Q_UNITS; ++u) {
      const int unit = threadIdx.x + u * RS_GEMV_STAGED_THREADS;
      const int r = unit / (2 * RS_LANES), block = (unit / 2) % RS_LANES, half = unit % 2;
      if (r < rows && chunk * RS_LANES + block < nb) dst.q[r][half][block] = q[u];
    }
#pragma unroll
    for (int u = 0; u < S_UNITS; ++u) {
      const int unit = threadIdx.x + u * RS_GEMV_STAGED_THREADS;
      const int r = unit / RS_LANES, block = unit % RS_LANES;
      if (r < rows && chunk * RS_LANES + block < nb) dst.scale[r][block] = s[u];
    }
  }
};

// Grid: ceil(N / (NR * RS_GEMV_STAGED_THREADS/32 / SPLIT)) blocks of RS_GEMV_STAGED_THREADS threads,
// rows <= RP * SPLIT. Same requirements as q8_gemv. With `live`, only the first *live rows (rs_live_rows).
template <int RP, int NR, int SPLIT, int OCC>
__global__ void RS_GEMV_BOUNDS(RS_GEMV_STAGED_THREADS, OCC)
q8_gemv_staged(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
               const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
               float* __restrict__ y, int n, int k, int rows, const float* base, const int* __restrict__ live) {
  __shared__ RsStagedChunk<RP * SPLIT> stage[2];
  const int nb = k / RS_QK;
  const int chunks = (nb + RS_LANES - 1) / RS_LANES;
  const int lane = rs_lane();
  long long row0;
  int r0;
  rs_gemv_place<NR, SPLIT>(RP, row0, r0);
  rows = rs_live_rows(live, rows);
  rs_kernel_begin();
  const bool active = row0 < n && r0 < rows;  // every thread stays for the barriers; idle groups help to stage

  float acc[NR][RP];
#pragma unroll
  for (int i = 0; i < NR; ++i) {
#pragma unroll
    for (int r = 0; r < RP; ++r) acc[i][r] = 0.0f;  // a lane value starts at +0.0
  }

  RsStagingRegs<RP * SPLIT> staging;
  staging.load(xq, xd, k, rows, 0);
  staging.store(stage[0], k, rows, 0);
  RsWeightBlocks<NR> next;
  if (active && lane < nb) next.load(wq, wd, row0, n, k, lane);
  __syncthreads();

  for (int c = 0; c < chunks; ++c) {
    const int b = c * RS_LANES + lane;
    const RsWeightBlocks<NR> w = next;
    if (c + 1 < chunks) {  // the next chunk's loads are in flight while this one is computed
      staging.load(xq, xd, k, rows, c + 1);
      if (active && b + RS_LANES < nb) next.load(wq, wd, row0, n, k, b + RS_LANES);
    }
    const RsStagedChunk<RP * SPLIT>& cur = stage[c % 2];
    if (active && b < nb) {
#pragma unroll
      for (int r = 0; r < RP; ++r) {
        const int4 x0 = cur.q[r0 + r][0][lane], x1 = cur.q[r0 + r][1][lane];  // rows past the end: never stored
        const float xs = cur.scale[r0 + r][lane];
#pragma unroll
        for (int i = 0; i < NR; ++i) {
          acc[i][r] = rs_gemv_step(acc[i][r], w.scale[i], xs, rs_block_dot(w.lo[i], w.hi[i], x0, x1));
        }
      }
    }
    if (c + 1 < chunks) staging.store(stage[(c + 1) % 2], k, rows, c + 1);  // its readers passed the last barrier
    __syncthreads();
  }
  if (active) rs_gemv_finish<RP, NR>(acc, row0, n, r0, rows, y, base);
}

// ----------------------------------------------------------------------------------------- q8_gemv_mma
// The same GEMV with the int8 block dots on NVIDIA's integer tensor cores (mma.sync m16n8k32 s8 x s8 -> s32:
// each block's dot is the exact integer dp4a gives, so no bit changes), and the weights streamed into shared
// memory by cp.async, STAGES rounds ahead, so that many bytes are in flight without holding registers.
//
// Mapping. A tile is 16*MT weight rows and all R <= 16 activation rows (RT = ceil(R / 8) tiles of 8); a thread
// block of NR warps computes its tiles one after the other. Warp w is the spec's lanes l = w*LPW .. w*LPW+LPW-1
// (LPW = 32/NR): in round i of a tile it takes blocks 32i + w*LPW + s, s < LPW, and adds block 32i + l to lane
// l's sums, in increasing i: exactly the spec's per-lane sequence. After a tile's last round the 32 lane values
// of every output meet in the spec's tree (in shared memory), and the store is rs_gemv_finish's (with `base`,
// base + sum).
//
// Each warp streams its own part of the weights and activations: for each round, its LPW blocks of the
// tile's 16*MT weight rows and of the R activation rows (LPW * 32 contiguous bytes a row: whole 128-byte
// lines) and their scales, copied by cp.async into one of its STAGES buffers. The block's rounds form one
// stream over its tiles: the weights of the first STAGES-1 are requested before rs_kernel_begin (weights are
// no kernel's output), their activations after it; then each round requests the one STAGES-1 ahead (in the
// next tile after a tile's last), waits for its own, and computes it. So the activations' cache latency
// hides behind the pipeline as the weights' does, and a block with many tiles never waits for a tile's first
// weights. Only the warp reads its buffers, so a __syncwarp orders the copies and the reads.
//
// The fragments come from the stage buffers by ldmatrix, k in the blocks' own byte order for A (weights) and
// B (activations) alike. The accumulator starts at the bits of 1.5 * 2**23, as rs_block_dot's dp4a chain
// does, so the float is one subtraction away. CUDA on sm_80 and newer only (the
// wrapper checks, and that K/32 is even: scales are copied 4 bytes at a time); HIP keeps q8_gemv.
#if !defined(RS_HIP)
#define RS_MMA_ROWS 16  // weight rows of one mma tile

// c = A B + bias for the m16n8k32 fragments a (weights) and b0, b1 (activations); bias: the bits of
// 1.5 * 2**23, four times (the mma's accumulator input).
RS_DEVICE void rs_mma_s8(int (&c)[4], const int (&a)[4], int b0, int b1, const unsigned (&bias)[4]) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(bias[0]), "r"(bias[1]), "r"(bias[2]),
        "r"(bias[3]));
#else
  __trap();
#endif
}

// Four (COUNT = 4) or two 8x8 matrices of 16-bit elements from shared memory: lane l gives the address of row
// l % 8 of matrix l / 8 (16 bytes), and gets from each matrix i the 4 bytes 4t .. 4t+3 of its row g (lane
// l = 4g + t) in r[i]. Volatile: the stage buffers it reads are rewritten by cp.async from round to round.
template <int COUNT>
RS_DEVICE void rs_ldmatrix(int (&r)[COUNT], unsigned address) {
#if __CUDA_ARCH__ >= 800
  if constexpr (COUNT == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  }
#else
  __trap();
#endif
}

// Asynchronous copies global -> shared (sm_80+): 16 or 4 bytes, grouped by commit, waited for by group.
// `dst` is a shared-memory address (__cvta_generic_to_shared).
RS_DEVICE void rs_copy_async16(unsigned dst, const void* src) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
#endif
}
RS_DEVICE void rs_copy_async4(unsigned dst, const void* src) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
#endif
}
RS_DEVICE void rs_copy_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int PENDING>  // wait until at most PENDING of this thread's groups are still in flight
RS_DEVICE void rs_copy_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
#endif
}

// rs_keep(x) == x, computed once: the compiler may not recompute x at its uses (it otherwise rebuilds the
// per-lane copy addresses, 64-bit products included, every round to save registers).
template <typename T>
RS_DEVICE T* rs_keep(T* p) {
  asm volatile("" : "+l"(p));
  return p;
}
RS_DEVICE unsigned rs_keep(unsigned v) {
  asm volatile("" : "+r"(v));
  return v;
}
RS_DEVICE int rs_keep(int v) {
  asm volatile("" : "+r"(v));
  return v;
}

// One warp's stage buffer for RP activation rows: the quants of its LPW blocks of the 16*MT weight rows, their
// fp16 scales [16*MT][LPW], then the same for the RP activation rows. A row of quants is LPW * 32 bytes,
// its 16-byte columns swizzled: column c of row r sits at c ^ key(r). The fragments are read by ldmatrix,
// 16 bytes of each of 8 rows 8q .. 8q+7 at the same column at once; key(r) gives those 8 rows 8 different
// 16-byte places in a 128-byte line, so that each read falls in 32 distinct banks.
template <int LPW, int MT, int RP, bool RES = false>
struct RsMmaStage {
  static constexpr int ROWS = RS_MMA_ROWS * MT;
  static constexpr int ROW_BYTES = LPW * RS_QK;
  static constexpr int SCALES = ROWS * ROW_BYTES;     // offset of the weights' scales
  static constexpr int ACT = SCALES + ROWS * LPW * 2;  // offset of the activations' quants (not RES)
  // The activations of a round: in the stage buffer after the weights, or (RES) in a slot of their own, one
  // per round of a tile: XOFF is where their quants start in either, XSOFF their scales.
  static constexpr int XOFF = RES ? 0 : ACT;
  static constexpr int XSOFF = XOFF + RP * ROW_BYTES;
  // Each warp's buffers start on a 128-byte line: with buffers of 16-byte multiples (RP = 8: 3264 bytes) the
  // GEMVs of 8-14 rows took 5-40 % longer on the H200, and L2 served twice the sectors at 14 rows (ncu).
  static constexpr int BYTES = ((RES ? ACT : XSOFF + RP * LPW * 2) + 127) / 128 * 128;
  static constexpr int X_BYTES = (RP * ROW_BYTES + RP * LPW * 2 + 127) / 128 * 128;  // a RES slot
  static constexpr int Q_UNITS = ROWS * LPW * 2;   // 16-byte copies of weight quants a round
  static constexpr int S_UNITS = ROWS * LPW / 2;   // 4-byte copies of weight scales (pairs of blocks) a round
  static constexpr int XQ_UNITS = RP * LPW * 2;    // the same for the activations
  static constexpr int XS_UNITS = RP * LPW / 2;
  static constexpr int Q_PER_LANE = (Q_UNITS + RS_LANES - 1) / RS_LANES;
  static constexpr int S_PER_LANE = (S_UNITS + RS_LANES - 1) / RS_LANES;
  static constexpr int XQ_PER_LANE = (XQ_UNITS + RS_LANES - 1) / RS_LANES;
  static constexpr int XS_PER_LANE = (XS_UNITS + RS_LANES - 1) / RS_LANES;
  static constexpr int UNITS = 2 * LPW;  // 16-byte columns of a row
  static_assert(UNITS >= 4, "rows of 64 bytes or more");
  // the swizzle of row r: r % 8 for rows of 128 bytes or more; rows of 64 bytes pair up in a line, (r / 2) % 4
  static RS_MEMBER int key(int r) { return UNITS >= 8 ? r % 8 : (r / 2) % 4; }
  // the byte offset of 16-byte column c of quant row r (from the start of its rows)
  static RS_MEMBER int column(int r, int c) { return r * ROW_BYTES + 16 * (c ^ key(r)); }
};

// A row's LPW scales in a stage buffer, read at once.
template <int LPW>
struct alignas(2 * LPW) RsScaleRow {
  unsigned short h[LPW];
};

// What one lane copies each round of q8_gemv_mma, worked out once. Unit j of its 16-byte weight-quant copies
// is unit j*32 + lane of the round (row u / (2*LPW), 16-byte column u % (2*LPW): consecutive lanes read whole
// lines), unit j of its 4-byte weight-scale copies unit j*32 + lane (row u / (LPW/2), pair u % (LPW/2)); the
// activations' copies likewise. A round i later than the first reads 32*i blocks further: 1024*i bytes of
// quants, 32*i scales. Rows past n (or past `rows`) are read as the last (a valid address); blocks past nb
// are not copied (nor ever read). RES: the activations of round i go to slot i of the warp's lanes (shared
// address xres + i * X_BYTES), all of them before the first round (first_activations); the stream then copies
// weights only.
template <int LPW, int MT, int RP, bool RES = false>
struct RsMmaCopier {
  using Stage = RsMmaStage<LPW, MT, RP, RES>;
  const signed char* q[Stage::Q_PER_LANE];
  const unsigned short* sc[Stage::S_PER_LANE];
  const signed char* xq[Stage::XQ_PER_LANE];
  const unsigned short* xs[Stage::XS_PER_LANE];
  unsigned qdst[Stage::Q_PER_LANE], sdst[Stage::S_PER_LANE];  // byte offsets in a stage buffer
  unsigned xqdst[Stage::XQ_PER_LANE], xsdst[Stage::XS_PER_LANE];
  int block;   // the block (0 .. LPW-1 of the warp's) this lane's quant copies fall in
  int pair;    // the first of the two blocks this lane's scale copies hold
  int q_left, s_left;  // a round's quant (scale) copies exist while 32 * its index < q_left (s_left)
  int b0;      // the warp's first block of the first round
  long long req_n0;  // the tile of the next request (its first weight row), and the request's round in it
  int req_round;
  unsigned xres;     // RES: the shared address of the activation slots of the warp's lanes

  RS_MEMBER RsMmaCopier(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
                        const signed char* __restrict__ aq, const unsigned short* __restrict__ ad, long long n0,
                        int n, int rows, int k, int nb, int first_block, int lane, unsigned x_slots) {
    b0 = first_block;
    xres = x_slots;
    block = (lane % (2 * LPW)) / 2;  // the same for every j: 2*LPW divides 32
    pair = 2 * (lane % (LPW / 2));
    q_left = rs_keep(nb - b0 - block);  // (kept: the compiler otherwise works them out again every round)
    s_left = rs_keep(nb - b0 - pair);
    req_n0 = n0;
    req_round = 0;
#pragma unroll
    for (int j = 0; j < Stage::Q_PER_LANE; ++j) {
      const int u = j * RS_LANES + lane, row = u / (2 * LPW);
      qdst[j] = rs_keep((unsigned)Stage::column(row, u % (2 * LPW)));
    }
#pragma unroll
    for (int j = 0; j < Stage::S_PER_LANE; ++j) {
      const int u = j * RS_LANES + lane, row = u / (LPW / 2);
      sdst[j] = rs_keep((unsigned)(Stage::SCALES + (row * LPW + pair) * 2));
    }
    point_weights(wq, wd, n0, n, k, nb, lane);
#pragma unroll
    for (int j = 0; j < Stage::XQ_PER_LANE; ++j) {
      const int u = j * RS_LANES + lane, row = u / (2 * LPW);
      const long long r = row < rows ? row : rows - 1;
      xq[j] = rs_keep(aq + r * k + (long long)b0 * RS_QK + 16 * (u % (2 * LPW)));
      xqdst[j] = rs_keep((unsigned)(Stage::XOFF + Stage::column(row, u % (2 * LPW))));
    }
#pragma unroll
    for (int j = 0; j < Stage::XS_PER_LANE; ++j) {
      const int u = j * RS_LANES + lane, row = u / (LPW / 2);
      const long long r = row < rows ? row : rows - 1;
      xs[j] = rs_keep(ad + r * nb + b0 + pair);
      xsdst[j] = rs_keep((unsigned)(Stage::XSOFF + (row * LPW + pair) * 2));
    }
  }

  // The weight copies' sources for the tile whose first row is n0 (rows past n: the last).
  RS_MEMBER void point_weights(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
                               long long n0, int n, int k, int nb, int lane) {
#pragma unroll
    for (int j = 0; j < Stage::Q_PER_LANE; ++j) {
      const int u = j * RS_LANES + lane, row = u / (2 * LPW);
      const long long r = n0 + row < n ? n0 + row : n - 1;
      q[j] = rs_keep(wq + r * k + (long long)b0 * RS_QK + 16 * (u % (2 * LPW)));
    }
#pragma unroll
    for (int j = 0; j < Stage::S_PER_LANE; ++j) {
      const int u = j * RS_LANES + lane, row = u / (LPW / 2);
      const long long r = n0 + row < n ? n0 + row : n - 1;
      sc[j] = rs_keep(wd + r * nb + b0 + pair);
    }
  }

  // Request round i's weights (WEIGHTS) into the stage buffer at shared address `buf` and its activations
  // (ACTS) into the buffer at `xbuf` (the same but for RES).
  template <bool WEIGHTS, bool ACTS>
  RS_MEMBER void copy(unsigned buf, unsigned xbuf, int i, int nb) const {
    const long long qoff = (long long)i * (RS_LANES * RS_QK);
    const int soff = i * RS_LANES;
    const int lane = rs_lane();
    if (soff < q_left) {  // b0 + soff + block < nb
#pragma unroll
      for (int j = 0; j < Stage::Q_PER_LANE; ++j) {
        if (WEIGHTS && (Stage::Q_UNITS % RS_LANES == 0 || j * RS_LANES + lane < Stage::Q_UNITS))
          rs_copy_async16(buf + qdst[j], q[j] + qoff);
      }
#pragma unroll
      for (int j = 0; j < Stage::XQ_PER_LANE; ++j) {
        if (ACTS && (Stage::XQ_UNITS % RS_LANES == 0 || j * RS_LANES + lane < Stage::XQ_UNITS))
          rs_copy_async16(xbuf + xqdst[j], xq[j] + qoff);
      }
    }
    if (soff < s_left) {  // b0 + soff + pair < nb; nb is even, so the pair's second block is there too
#pragma unroll
      for (int j = 0; j < Stage::S_PER_LANE; ++j) {
        if (WEIGHTS && (Stage::S_UNITS % RS_LANES == 0 || j * RS_LANES + lane < Stage::S_UNITS))
          rs_copy_async4(buf + sdst[j], sc[j] + soff);
      }
#pragma unroll
      for (int j = 0; j < Stage::XS_PER_LANE; ++j) {
        if (ACTS && (Stage::XS_UNITS % RS_LANES == 0 || j * RS_LANES + lane < Stage::XS_UNITS))
          rs_copy_async4(xbuf + xsdst[j], xs[j] + soff);
      }
    }
  }

  // The next round of the block's stream (weights, activations as asked, RES: weights only; nothing where
  // `valid` is false) into `buf`, as one commit group; then on to the round after it: past a tile's last
  // round, the next tile's first (`stride` rows further).
  template <bool WEIGHTS, bool ACTS>
  RS_MEMBER void next(unsigned buf, bool valid, const signed char* __restrict__ wq,
                      const unsigned short* __restrict__ wd, long long stride, int n, int k, int nb, int rounds,
                      int lane) {
    if (valid) copy<WEIGHTS, ACTS && !RES>(buf, buf, req_round, nb);
    rs_copy_commit();
    if (++req_round == rounds) {
      req_round = 0;
      req_n0 += stride;
      point_weights(wq, wd, req_n0, n, k, nb, lane);
    }
  }

  // The weights of the stream's first STAGES-1 rounds into a warp's first STAGES-1 buffers (at shared address
  // `pipe`), one commit group each: they come in while the kernel before this one finishes.
  template <int STAGES>
  RS_MEMBER void first_weights(unsigned pipe, int total, const signed char* __restrict__ wq,
                               const unsigned short* __restrict__ wd, long long stride, int n, int k, int nb,
                               int rounds, int lane) {
#pragma unroll
    for (int q = 0; q < STAGES - 1; ++q) {
      next<true, false>(pipe + q * Stage::BYTES, q < total, wq, wd, stride, n, k, nb, rounds, lane);
    }
  }

  // Their activations, once the kernel before has finished: one commit group. The stream starts at a tile's
  // first round, so its round q is round q % rounds of a tile. RES: every round's activations into their
  // slots instead, rounds group, group + GROUPS, ... of them (the block's GROUPS warps of the same lanes share
  // the slots, each copying a part).
  template <int STAGES, int GROUPS>
  RS_MEMBER void first_activations(unsigned pipe, int total, int nb, int rounds, int group) const {
    if (RES) {
      for (int q = group; q < rounds; q += GROUPS) copy<false, true>(0, xres + q * Stage::X_BYTES, q, nb);
    } else {
#pragma unroll
      for (int q = 0; q < STAGES - 1; ++q) {
        if (q < total) copy<false, true>(pipe + q * Stage::BYTES, pipe + q * Stage::BYTES, q % rounds, nb);
      }
    }
    rs_copy_commit();
  }
};

// One round of q8_gemv_mma for a warp: its LPW blocks (block b0 + s) of the tile's rows from the stage buffer
// `buf` (shared address buf_address) and of the activations from `xbuf` (xbuf_address: the same buffer, or a
// RES slot) into the lane sums acc, in increasing s. The lane's scales sit at byte ws_at of `buf` (row g of
// the weights; row g + 16m at + 32 m LPW, g + 8 at + 16 LPW) and xs_at[rt][c] of `xbuf` (activation rows c0,
// c1 of tile rt). CHECK: some blocks lie past nb (the last round of rows of a partial round), and are skipped.
template <int LPW, int MT, int RT, bool ODD, bool CHECK, typename Stage>
RS_DEVICE void rs_mma_round(float (&acc)[LPW][MT][RT][4], const unsigned char* buf, unsigned buf_address,
                            const unsigned char* xbuf, unsigned xbuf_address, const unsigned (&a_at)[LPW],
                            const unsigned (&x_at)[LPW], const unsigned (&xs_at)[RT][2], unsigned ws_at,
                            const unsigned (&bias)[4], int b0, int nb) {
  RsScaleRow<LPW> xs0[RT], xs1[RT];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
    xs0[rt] = *reinterpret_cast<const RsScaleRow<LPW>*>(xbuf + xs_at[rt][0]);
    if (ODD) xs1[rt] = *reinterpret_cast<const RsScaleRow<LPW>*>(xbuf + xs_at[rt][1]);
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const unsigned char* const rows_a = buf + ws_at + m * RS_MMA_ROWS * LPW * 2;  // rows g, g + 8 of tile m
    const RsScaleRow<LPW> sa = *reinterpret_cast<const RsScaleRow<LPW>*>(rows_a);
    const RsScaleRow<LPW> sc = *reinterpret_cast<const RsScaleRow<LPW>*>(rows_a + 8 * LPW * 2);
#pragma unroll
    for (int s = 0; s < LPW; ++s) {
      if (CHECK && b0 + s >= nb) continue;  // the same for the whole warp (ldmatrix and mma need all its lanes)
      int a[4], x[2 * RT];
      rs_ldmatrix<4>(a, buf_address + a_at[s] + m * RS_MMA_ROWS * Stage::ROW_BYTES);
      rs_ldmatrix<2 * RT>(x, xbuf_address + x_at[s]);
      const float fa = rs_half_to_float(sa.h[s]), fc = rs_half_to_float(sc.h[s]);
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) {
        int c[4];
        rs_mma_s8(c, a, x[2 * rt], x[2 * rt + 1], bias);
        // c0: (row g, act 2t), c1: (g, 2t+1), c2: (g+8, 2t), c3: (g+8, 2t+1), each 1.5 * 2**23 + dot
        const float x0 = rs_half_to_float(xs0[rt].h[s]);
        acc[s][m][rt][0] = rs_gemv_step(acc[s][m][rt][0], fa, x0, rs_sub(rs_as_float(c[0]), 0x1.8p+23f));
        acc[s][m][rt][2] = rs_gemv_step(acc[s][m][rt][2], fc, x0, rs_sub(rs_as_float(c[2]), 0x1.8p+23f));
        if (ODD) {
          const float x1 = rs_half_to_float(xs1[rt].h[s]);
          acc[s][m][rt][1] = rs_gemv_step(acc[s][m][rt][1], fa, x1, rs_sub(rs_as_float(c[1]), 0x1.8p+23f));
          acc[s][m][rt][3] = rs_gemv_step(acc[s][m][rt][3], fc, x1, rs_sub(rs_as_float(c[3]), 0x1.8p+23f));
        }
      }
    }
  }
}

// The partial sums of a tile's tree, partial[lane][row][column], hold output (row, column) at column
// column ^ key(row). A warp stores the values of one mma register at once: rows g, columns 2t (+1) of each of its
// 32 lanes (g = lane / 4, t = lane % 4). Unswizzled, rows of 16 columns (16 activation rows) put the 8 rows g on
// 2 groups of 16 banks, 4 rows on each (4-way conflicts), and rows of 8 columns 2 rows on each bank group of 8. The
// key flips column bits that the 2t do not use (bits 0 and 3, or bit 0), so that the 32 stores fall in 32 banks;
// the tree reads whole rows, which a key only permutes.
template <int RT>
RS_DEVICE int rs_mma_partial_key(int row) {
  return RT == 2 ? ((row >> 1) & 1) | (((row >> 2) & 1) << 3) : (row >> 2) & 1;
}

// Dynamic shared memory of q8_gemv_mma<RP, NR, MT, STAGES, RES, GROUPS> (refspec.gpu.GemvConfig.shared_bytes
// says the same): the warps' stage buffers, with RES the activation slots of each of the NR warps' lanes for the
// `rounds` rounds of a tile (shared by the GROUPS warps of the same lanes) (pipe), then each group's partial
// sums [32 lanes][16*MT][8*RT] of a tile's tree (bytes: apart, as the stage buffers already hold the next
// tile's first rounds while the tree runs). A launch of one group whose blocks take one tile each needs only
// one_tile: its partial sums reuse the drained buffers.
template <int RP, int NR, int MT, int STAGES, bool RES = false, int GROUPS = 1>
struct RsMmaShared {
  using Stage = RsMmaStage<RS_LANES / NR, MT, RP, RES>;
  static constexpr int RT = (RP + 7) / 8;
  static constexpr int PARTIAL = RS_LANES * RS_MMA_ROWS * MT * 8 * RT * 4;
  static constexpr __host__ __device__ int stages() { return GROUPS * NR * STAGES * Stage::BYTES; }
  static constexpr __host__ __device__ int pipe(int rounds) {
    return stages() + (RES ? NR * rounds * Stage::X_BYTES : 0);
  }
  static constexpr __host__ __device__ int bytes(int rounds) { return pipe(rounds) + GROUPS * PARTIAL; }
  static constexpr __host__ __device__ int one_tile(int rounds) {
    return GROUPS > 1 ? bytes(rounds) : pipe(rounds) > PARTIAL ? pipe(rounds) : PARTIAL;
  }
};

// A barrier for the NR warps of group `group` of a q8_gemv_mma block (the whole block when it is one group):
// barrier 1 or 2 (numbers known to the compiler, which otherwise sets aside all 16 of a block's).
template <int NR, int GROUPS>
RS_DEVICE void rs_mma_group_sync(int group) {
  static_assert(GROUPS == 1 || GROUPS == 2, "one or two groups a block");
  if (GROUPS == 1) {
    __syncthreads();
  } else if (group == 0) {
    asm volatile("bar.sync 1, %0;" ::"n"(NR * RS_LANES) : "memory");
  } else {
    asm volatile("bar.sync 2, %0;" ::"n"(NR * RS_LANES) : "memory");
  }
}

// RES (activations resident): the activations of every round of a tile sit in slots, one for each warp's lanes,
// copied before the first round and read from there by every tile, which copies only weights (each warp reads
// only its own blocks of the activations, the same in every tile). For blocks that stream many tiles: the copies
// of the activations, R/16/MT of the weights' bytes a tile, go through the L2 cache once a block, not once a tile.
// GROUPS: a block of GROUPS groups of NR warps, each group a stream of tiles of its own (as a block of one group
// would be), all sharing the RES slots: group g of block b is stream b + g * gridDim.x of gridDim.x * G, so that
// a grid of a block a multiprocessor deals tiles b, b + gridDim.x, b + 2 * gridDim.x, ... to block b (its tiles
// differ by at most one from any other block's). Where two blocks of one group fit a multiprocessor, one block of
// two holds the activations once, and so has room for more rounds in flight (STAGES).
// Grid: any number of blocks of 32*NR*GROUPS threads; stream s takes tiles s, s + streams, ... of 16*MT weight rows
// (the backend gives one stream a tile, or, for matrices of many tiles, as many as fit on the GPU at once).
// rows <= RP <= 16; RsMmaShared<...>::bytes(rounds) of dynamic shared memory, or one_tile(rounds) with a stream
// for each tile. Needs K % 64 == 0, 16-byte aligned wq and xq and 4-byte aligned wd (the wrapper checks).
template <int RP, int NR, int MT, int STAGES, bool RES = false, int GROUPS = 1>
__global__ void __launch_bounds__(RS_LANES * NR * GROUPS, GROUPS == 1 && NR == 8 && MT == 1 ? 2 : 1)  // 8 warps: up to 128 registers (it spilled at 80)
q8_gemv_mma(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
            const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
            float* __restrict__ y, int n, int k, int rows, const float* base) {
  constexpr int RT = (RP + 7) / 8;     // tiles of 8 activation rows
  constexpr int LPW = RS_LANES / NR;   // spec lanes per warp
  using Shared = RsMmaShared<RP, NR, MT, STAGES, RES, GROUPS>;
  using Stage = typename Shared::Stage;
  extern __shared__ int4 rs_mma_shared[];
  const int nb = k / RS_QK;
  const int rounds = (nb + RS_LANES - 1) / RS_LANES;
  const int lane = rs_lane(), g = lane / 4, t = lane % 4;  // the fragment's group and thread-in-group
  const int group = GROUPS == 1 ? 0 : threadIdx.x / (RS_LANES * NR);  // the block's group of warps (a stream)
  const int warp = (GROUPS == 1 ? threadIdx.x : threadIdx.x % (RS_LANES * NR)) / RS_LANES;  // lanes warp*LPW ..
  const int tiles = (n + Stage::ROWS - 1) / Stage::ROWS;
  // this stream's first tile; it takes every blocks-th after
  const int first = blockIdx.x + group * gridDim.x, blocks = gridDim.x * GROUPS;
  const long long stride = (long long)blocks * Stage::ROWS;  // rows from one of this stream's tiles to the next
  const int total = first < tiles ? ((tiles - 1 - first) / blocks + 1) * rounds : 0;  // the stream's rounds
  unsigned char* const pipe =
      reinterpret_cast<unsigned char*>(rs_mma_shared) + threadIdx.x / RS_LANES * STAGES * Stage::BYTES;
  const unsigned pipe_address = (unsigned)__cvta_generic_to_shared(pipe);
  // RES: the activation slots of this warp's lanes, after every warp's stage buffers
  unsigned char* const x_slots =
      reinterpret_cast<unsigned char*>(rs_mma_shared) + Shared::pipe(0) + warp * rounds * Stage::X_BYTES;
  const unsigned x_slots_address = (unsigned)__cvta_generic_to_shared(x_slots);
  RsMmaCopier<LPW, MT, RP, RES> copier(wq, wd, xq, xd, (long long)first * Stage::ROWS, n, rows, k, nb, warp * LPW,
                                       lane, x_slots_address);
  copier.template first_weights<STAGES>(pipe_address, total, wq, wd, stride, n, k, nb, rounds, lane);
  rs_kernel_begin();
  copier.template first_activations<STAGES, GROUPS>(pipe_address, total, nb, rounds, group);
  rs_copy_wait<0>();  // the first round's weights were asked for first; the rest of the first rounds came with them
  if (RES && GROUPS > 1) __syncthreads();  // and so have the other groups' copies of the shared slots

  float acc[LPW][MT][RT][4];
#pragma unroll
  for (int s = 0; s < LPW; ++s) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[s][m][rt][j] = 0.0f;  // a lane value starts at +0.0
      }
    }
  }
  // Where this lane reads in a stage buffer. The fragments by ldmatrix: for the weights, matrix i = lane / 8 is
  // rows 8 * (i % 2) .. +7 of a 16-row tile at bytes 16 * (i / 2) .. +15 of a block, so the four registers are
  // the m16n8k32 A fragment (rows g and g + 8, k = 4t .. 4t+3 and 16+4t .. 19+4t); for the activations, matrix
  // i is rows 8 * (i / 2) .. +7 (tile rt = i / 2) at bytes 16 * (i % 2) .. +15: B fragments b0, b1 of each tile
  // (rows past the end: the last, never stored). Row j = lane % 8 of a matrix is this lane's: block s of it at
  // 16 * ((2s + half) ^ key(row)) = (32s) ^ (16 * (key(row) ^ half)). Then the scales of columns 2t, 2t+1.
  const int j8 = lane % 8, m8 = lane / 8;
  const unsigned a_row = (unsigned)((j8 + 8 * (m8 % 2)) * Stage::ROW_BYTES);  // + tile m's 16 rows
  const unsigned a_key = (unsigned)(16 * (Stage::key(j8 + 8 * (m8 % 2)) ^ (m8 / 2)));
  const int x_r = (RT == 2 ? 8 * (m8 / 2) : 0) + j8 < rows ? (RT == 2 ? 8 * (m8 / 2) : 0) + j8 : rows - 1;
  const unsigned x_row = (unsigned)(Stage::XOFF + x_r * Stage::ROW_BYTES);
  const unsigned x_key = (unsigned)(16 * (Stage::key(x_r) ^ (m8 % 2)));
  unsigned a_at[LPW], x_at[LPW];  // this lane's ldmatrix offsets of block s in a stage buffer, worked out once
#pragma unroll
  for (int s = 0; s < LPW; ++s) {
    a_at[s] = rs_keep(a_row + ((32u * s) ^ a_key));
    x_at[s] = rs_keep(x_row + ((32u * s) ^ x_key));
  }
  unsigned bias[4];  // the mma's accumulator input, 1.5 * 2**23's bits
#pragma unroll
  for (int q = 0; q < 4; ++q) bias[q] = rs_keep((unsigned)RS_DOT_BIAS);
  // Where this lane's activation scales sit: rows c0 = 8rt + 2t, c1 = c0 + 1 (past the end: the last). Up to 8
  // rows kept in registers (the compiler otherwise works them out again every round); at 9-16 rows that spills.
  unsigned xs_at[RT][2];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
    const int c0 = rt * 8 + 2 * t < rows ? rt * 8 + 2 * t : rows - 1;
    const int c1 = rt * 8 + 2 * t + 1 < rows ? rt * 8 + 2 * t + 1 : rows - 1;
    xs_at[rt][0] = Stage::XSOFF + c0 * LPW * 2;
    xs_at[rt][1] = Stage::XSOFF + c1 * LPW * 2;
    if (RT == 1) xs_at[rt][0] = rs_keep(xs_at[rt][0]), xs_at[rt][1] = rs_keep(xs_at[rt][1]);
  }
  const unsigned ws_at = rs_keep((unsigned)(Stage::SCALES + g * LPW * 2));  // and the weights' (row g)
  constexpr bool ODD = RP > 1;  // whether columns 2t+1 (c1, c3) hold any row: not for a single row
  const int key_g = rs_mma_partial_key<RT>(g);  // the partial sums' swizzle for rows g and g + 8 of each tile
  // the partial sums: after the stage buffers, or in them where each block has one tile (drained by then)
  float(*partial)[RS_MMA_ROWS * MT][8 * RT] = reinterpret_cast<float(*)[RS_MMA_ROWS * MT][8 * RT]>(
      reinterpret_cast<unsigned char*>(rs_mma_shared) +
      (GROUPS == 1 && blocks >= tiles ? 0 : Shared::pipe(rounds) + group * Shared::PARTIAL));

  long long n0 = (long long)first * Stage::ROWS;  // the tile computed now (its first weight row)
  int use = 0, fill = STAGES - 1;  // the buffers of the round computed now and of the next request
  int i = 0;                       // the round of the tile computed now
  for (int q = 0; q < total; ++q) {
    copier.template next<true, true>(pipe_address + fill * Stage::BYTES, q + STAGES - 1 < total, wq, wd, stride, n, k,
                                     nb, rounds, lane);  // round q + STAGES - 1 of the block's stream
    fill = fill + 1 == STAGES ? 0 : fill + 1;
    rs_copy_wait<STAGES - 1>();  // this thread's copies of round q have landed
    __syncwarp();                // and so have the other lanes'
    const int b0 = i * RS_LANES + warp * LPW;
    const unsigned char* const buf = pipe + use * Stage::BYTES;
    const unsigned buf_address = pipe_address + use * Stage::BYTES;
    const unsigned char* const xbuf = RES ? x_slots + i * Stage::X_BYTES : buf;  // the round's activations
    const unsigned xbuf_address = RES ? x_slots_address + i * Stage::X_BYTES : buf_address;
    use = use + 1 == STAGES ? 0 : use + 1;
    // a round whose blocks all exist (every round of rows of whole rounds) runs without a test per block, so
    // that the compiler can overlap the blocks' loads, mma and adds
    if (b0 + LPW <= nb) {
      rs_mma_round<LPW, MT, RT, ODD, false, Stage>(acc, buf, buf_address, xbuf, xbuf_address, a_at, x_at, xs_at,
                                                   ws_at, bias, b0, nb);
    } else {
      rs_mma_round<LPW, MT, RT, ODD, true, Stage>(acc, buf, buf_address, xbuf, xbuf_address, a_at, x_at, xs_at,
                                                  ws_at, bias, b0, nb);
    }
    __syncwarp();  // every lane has read the buffer the next round's request overwrites
    if (++i < rounds) continue;
    // The tile's last round: its sums meet in the spec's tree, and the next tile starts from +0.0.
    i = 0;
    rs_mma_group_sync<NR, GROUPS>(group);  // the group has read the partial sums of its tile before (and buffers)
#pragma unroll
    for (int s = 0; s < LPW; ++s) {
      const int l = warp * LPW + s;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
          const int ra = m * RS_MMA_ROWS + g, col = (rt * 8 + 2 * t) ^ key_g;  // rows ra, ra + 8: the same key
          partial[l][ra][col] = acc[s][m][rt][0];
          partial[l][ra][col ^ 1] = acc[s][m][rt][1];
          partial[l][ra + 8][col] = acc[s][m][rt][2];
          partial[l][ra + 8][col ^ 1] = acc[s][m][rt][3];
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[s][m][rt][j] = 0.0f;
        }
      }
    }
    rs_mma_group_sync<NR, GROUPS>(group);
    // the spec's tree over the 32 lane values of each output: lane i + width onto lane i, width 16 .. 1
    for (int o = GROUPS == 1 ? threadIdx.x : threadIdx.x % (RS_LANES * NR); o < RS_MMA_ROWS * MT * 8 * RT;
         o += RS_LANES * NR) {
      const int row = o / (8 * RT), col = o % (8 * RT);
      const long long nrow = n0 + row;
      if (nrow >= n || col >= rows) continue;
      const int at = col ^ rs_mma_partial_key<RT>(row);  // where the lanes' values of (row, col) sit
      float v[RS_LANES];
#pragma unroll
      for (int l = 0; l < RS_LANES; ++l) v[l] = partial[l][row][at];
#pragma unroll
      for (int l = 0; l < 16; ++l) v[l] = rs_add(v[l], v[l + 16]);
#pragma unroll
      for (int l = 0; l < 8; ++l) v[l] = rs_add(v[l], v[l + 8]);
#pragma unroll
      for (int l = 0; l < 4; ++l) v[l] = rs_add(v[l], v[l + 4]);
      v[0] = rs_add(v[0], v[2]);
      v[1] = rs_add(v[1], v[3]);
      v[0] = rs_add(v[0], v[1]);
      const long long e = (long long)col * n + nrow;
      y[e] = base ? rs_add(base[e], v[0]) : v[0];
    }
    n0 += stride;
  }
  rs_copy_wait<0>();  // no copy is left in flight when the block ends
}
#endif
