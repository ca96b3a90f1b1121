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

// The spec's tree for the N sums of a group at once, slot s = i*R + r holding weight row i, activation row
// r. At each offset (16, 8, 4, 2, 1) the group halves the slots it carries while their count is even: a lane
// keeps the half selected by its offset bit and sends the other half to its partner, which adds it to the
// same slots (lane value + partner's lane value, as in rs_lane_tree). With an odd count every slot is
// exchanged, and the lanes with the offset bit set hold duplicates. Every slot sees rs_lane_tree's additions,
// with 62 exchanges for 64 slots instead of 5 * 64. Templates keep every index a compile-time constant (no
// register array may go to memory). After the last level this lane holds slots first .. first+COUNT-1.
template <int COUNT, int OFFSET>
struct RsTreeCount {  // how many slots a lane holds after the levels OFFSET, OFFSET/2, ..., 1
  static constexpr int value = RsTreeCount<COUNT % 2 == 0 ? COUNT / 2 : COUNT, OFFSET / 2>::value;
};
template <int COUNT>
struct RsTreeCount<COUNT, 0> {
  static constexpr int value = COUNT;
};

template <int N, int COUNT, int OFFSET>
struct RsTreeSlots {
  RS_DEVICE void run(float (&v)[N], int lane, int& first, bool& owner) {
    if (COUNT % 2 == 0) {
      constexpr int half = COUNT / 2;
      const bool upper = (lane & OFFSET) != 0;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const float low = rs_opaque(v[i]), high = rs_opaque(v[half + i]);
        const float send = upper ? low : high;
        const float keep = upper ? high : low;
        v[i] = rs_add(keep, rs_shfl_xor(send, OFFSET));
      }
      if (upper) first += half;
      RsTreeSlots<N, COUNT % 2 == 0 ? COUNT / 2 : COUNT, OFFSET / 2>::run(v, lane, first, owner);
    } else {
#pragma unroll
      for (int i = 0; i < COUNT; ++i) v[i] = rs_add(v[i], rs_shfl_xor(v[i], OFFSET));
      if (lane & OFFSET) owner = false;
      RsTreeSlots<N, COUNT, OFFSET / 2>::run(v, lane, first, owner);
    }
  }
};

template <int N, int COUNT>
struct RsTreeSlots<N, COUNT, 0> {
  RS_DEVICE void run(float (&)[N], int, int&, bool&) {}
};

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
// Grid: ceil(N / (NR * RS_GEMV_THREADS/32 / SPLIT)) blocks of RS_GEMV_THREADS threads, rows <= RP * SPLIT.
// Needs K % 32 == 0 and 16-byte aligned wq and xq (the wrapper checks). y = base + W x when base is not null
// (base may not overlap y).
template <int RP, int NR, int SPLIT, int OCC>
__global__ void RS_GEMV_BOUNDS(RS_GEMV_THREADS, OCC)
q8_gemv(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
        const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
        float* __restrict__ y, int n, int k, int rows, const float* base) {
  const int nb = k / RS_QK;
  const int lane = rs_lane();
  long long row0;
  int r0;
  rs_gemv_place<NR, SPLIT>(RP, row0, r0);
  // The first weight blocks are loaded before rs_kernel_begin (portable.h): weights are no kernel's output,
  // so they come in while the kernel before this one finishes.
  RsWeightBlocks<NR> next;
  if (row0 < n && lane < nb) next.load(wq, wd, row0, n, k, lane);
  rs_kernel_begin();
  if (row0 >= n || r0 >= rows) return;  // the whole group leaves together

  float acc[NR][RP];
#pragma unroll
  for (int i = 0; i < NR; ++i) {
#pragma unroll
    for (int r = 0; r < RP; ++r) acc[i][r] = 0.0f;  // a lane value starts at +0.0
  }

  for (int b = lane; b < nb; b += RS_LANES) {
    const RsWeightBlocks<NR> w = next;
    if (b + RS_LANES < nb) next.load(wq, wd, row0, n, k, b + RS_LANES);  // in flight while we compute
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
  rs_gemv_finish<RP, NR>(acc, row0, n, r0, rows, y, base);
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
// rows <= RP * SPLIT. Same requirements as q8_gemv.
template <int RP, int NR, int SPLIT, int OCC>
__global__ void RS_GEMV_BOUNDS(RS_GEMV_STAGED_THREADS, OCC)
q8_gemv_staged(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
               const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
               float* __restrict__ y, int n, int k, int rows, const float* base) {
  __shared__ RsStagedChunk<RP * SPLIT> stage[2];
  const int nb = k / RS_QK;
  const int chunks = (nb + RS_LANES - 1) / RS_LANES;
  const int lane = rs_lane();
  long long row0;
  int r0;
  rs_gemv_place<NR, SPLIT>(RP, row0, r0);
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
// each block's dot is the exact integer dp4a gives, so no bit changes), for verify widths where the dp4a
// kernel runs out of issue slots. A thread block of NR warps owns 16 weight rows and all R <= 16 activation
// rows (RT = ceil(R / 8) tiles of 8). Warp w is the spec's lanes l = w*LPW .. w*LPW+LPW-1 (LPW = 32/NR): for
// each, it adds blocks l, l+32, l+64, ... in increasing order to that lane's sums, exactly the spec's per-lane
// sequence. A warp's blocks of one round are thus LPW*32 contiguous bytes of each of the 16 rows, read in
// whole lines and staged through shared memory (RsMmaTile);
// the 32 lane values of every output then meet in the spec's tree (in shared memory), and the store is as
// rs_gemv_finish's (with `base`, base + sum). The dot of a block does not depend on the order of its 32
// products, so A (weights) and B (activations) are loaded with the same permutation of k: a lane's 8
// contiguous bytes t*8 .. t*8+7 of a block stand for the fragment positions k = 4t .. 4t+3 and 16+4t .. 19+4t.
// CUDA on sm_80 and newer only (the wrapper checks); HIP keeps q8_gemv.
#if !defined(RS_HIP)
#define RS_MMA_ROWS 16  // weight rows per thread block

RS_DEVICE void rs_mma_s8(int (&c)[4], const int (&a)[4], int b0, int b1) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%10,%10,%10,%10};"
               : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
#else
  __trap();
#endif
}

// A warp's weights of one round in q8_gemv_mma: its LPW consecutive blocks (LPW * 32 bytes) of 16 weight rows.
// They are read from global memory in 16-byte units, a row's LPW * 32 bytes by consecutive lanes (whole
// 128-byte lines), kept in registers while the round before is computed, then written to the warp's tile in
// shared memory, whence each lane reads its fragment. A tile row is padded by 32 bytes so that the 8-byte
// fragment reads of 8 rows fall in different banks.
template <int LPW>
struct RsMmaTile {
  static constexpr int ROW_BYTES = LPW * RS_QK + 32;  // a tile row, padded
  static constexpr int BYTES = RS_MMA_ROWS * ROW_BYTES;
  int4 unit[LPW];             // this lane's 16-byte units of the next round: unit j*32 + lane of the tile
  unsigned short sa[LPW], sc[LPW];  // the scales of rows g and g+8 of the fragment, each block

  RS_MEMBER void load(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd, long long n0,
                      int n, int k, int nb, int b0, int lane) {
#pragma unroll
    for (int j = 0; j < LPW; ++j) {
      const int u = j * RS_LANES + lane;
      const int row = u / (2 * LPW), col = u % (2 * LPW);  // col: 16-byte unit within the row's LPW blocks
      const long long r = n0 + row < n ? n0 + row : n - 1;  // rows past n: read as the last, never stored
      if (b0 + col / 2 < nb) unit[j] = *(const int4*)(wq + r * k + (long long)b0 * RS_QK + 16 * col);
    }
    const int g = lane / 4;
    const long long na = n0 + g < n ? n0 + g : n - 1, nc = n0 + g + 8 < n ? n0 + g + 8 : n - 1;
#pragma unroll
    for (int s = 0; s < LPW; ++s) {
      if (b0 + s < nb) {
        sa[s] = wd[na * nb + b0 + s];
        sc[s] = wd[nc * nb + b0 + s];
      }
    }
  }

  RS_MEMBER void store(unsigned char* tile, int lane) const {
#pragma unroll
    for (int j = 0; j < LPW; ++j) {
      const int u = j * RS_LANES + lane;
      *(int4*)(tile + (u / (2 * LPW)) * ROW_BYTES + 16 * (u % (2 * LPW))) = unit[j];
    }
  }
};

template <int RP, int NR, int SPLIT, int OCC>  // RP = rows, NR = warps per block (4 or 8); SPLIT, OCC unused
__global__ void __launch_bounds__(RS_LANES * NR)
q8_gemv_mma(const signed char* __restrict__ wq, const unsigned short* __restrict__ wd,
            const signed char* __restrict__ xq, const unsigned short* __restrict__ xd,
            float* __restrict__ y, int n, int k, int rows, const float* base) {
  rs_kernel_begin();
  constexpr int RT = (RP + 7) / 8;     // tiles of 8 activation rows
  constexpr int LPW = RS_LANES / NR;   // spec lanes per warp: warp w has lanes w*LPW .. w*LPW + LPW-1
  using Tile = RsMmaTile<LPW>;
  constexpr int PARTIAL_BYTES = RS_LANES * RS_MMA_ROWS * 8 * RT * 4;
  constexpr int SHARED_BYTES = NR * Tile::BYTES > PARTIAL_BYTES ? NR * Tile::BYTES : PARTIAL_BYTES;
  __shared__ int4 shared_mem[SHARED_BYTES / 16];  // the warps' tiles, then (after the loop) the partial sums
  float(*partial)[RS_MMA_ROWS][8 * RT] = reinterpret_cast<float(*)[RS_MMA_ROWS][8 * RT]>(shared_mem);
  const int nb = k / RS_QK;
  const int warp = threadIdx.x / RS_LANES, lane = rs_lane();
  const int g = lane / 4, t = lane % 4;  // the fragment's group and thread-in-group
  const long long n0 = (long long)blockIdx.x * RS_MMA_ROWS;
  unsigned char* tile = reinterpret_cast<unsigned char*>(shared_mem) + warp * Tile::BYTES;

  float acc[LPW][RT][4];
#pragma unroll
  for (int s = 0; s < LPW; ++s) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[s][rt][j] = 0.0f;  // a lane value starts at +0.0
    }
  }
  // Round i: this warp's blocks b = 32 i + warp * LPW + s, s < LPW (spec lane warp * LPW + s adds block
  // 32 i + its lane in increasing i, the spec's per-lane order). Blocks past the end (only in the last
  // round) are neither loaded nor added.
  Tile next;
  next.load(wq, wd, n0, n, k, nb, warp * LPW, lane);
  for (int i = 0; i * RS_LANES < nb; ++i) {
    const int b0 = i * RS_LANES + warp * LPW;
    unsigned short sa[LPW], sc[LPW];
#pragma unroll
    for (int s = 0; s < LPW; ++s) sa[s] = next.sa[s], sc[s] = next.sc[s];
    __syncwarp();  // every lane has read the tile of the round before
    next.store(tile, lane);
    __syncwarp();
    if ((i + 1) * RS_LANES < nb) next.load(wq, wd, n0, n, k, nb, b0 + RS_LANES, lane);  // in flight meanwhile
#pragma unroll
    for (int s = 0; s < LPW; ++s) {
      const int b = b0 + s;
      if (b >= nb) continue;  // the same for the whole warp
      const int2 wa = *(const int2*)(tile + g * Tile::ROW_BYTES + s * RS_QK + 8 * t);
      const int2 wc = *(const int2*)(tile + (g + 8) * Tile::ROW_BYTES + s * RS_QK + 8 * t);
      const int a[4] = {wa.x, wc.x, wa.y, wc.y};
      const float fa = rs_half_to_float(sa[s]), fc = rs_half_to_float(sc[s]);
#pragma unroll
      for (int rt = 0; rt < RT; ++rt) {
        const int xr = rt * 8 + g < rows ? rt * 8 + g : rows - 1;  // rows past the end: never stored
        const int2 xv = *(const int2*)(xq + (long long)xr * k + (long long)b * RS_QK + 8 * t);
        int c[4];
        rs_mma_s8(c, a, xv.x, xv.y);
        const int r0 = rt * 8 + 2 * t < rows ? rt * 8 + 2 * t : rows - 1;
        const int r1 = rt * 8 + 2 * t + 1 < rows ? rt * 8 + 2 * t + 1 : rows - 1;
        const float x0 = rs_half_to_float(xd[r0 * nb + b]), x1 = rs_half_to_float(xd[r1 * nb + b]);
        // c0: (row g, act 2t), c1: (g, 2t+1), c2: (g+8, 2t), c3: (g+8, 2t+1); |dot| < 2**24: exact floats
        acc[s][rt][0] = rs_gemv_step(acc[s][rt][0], fa, x0, (float)c[0]);
        acc[s][rt][1] = rs_gemv_step(acc[s][rt][1], fa, x1, (float)c[1]);
        acc[s][rt][2] = rs_gemv_step(acc[s][rt][2], fc, x0, (float)c[2]);
        acc[s][rt][3] = rs_gemv_step(acc[s][rt][3], fc, x1, (float)c[3]);
      }
    }
  }
  __syncthreads();  // every warp is done with its tile: the memory now holds the partial sums
#pragma unroll
  for (int s = 0; s < LPW; ++s) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
      const int l = warp * LPW + s;
      partial[l][g][rt * 8 + 2 * t] = acc[s][rt][0];
      partial[l][g][rt * 8 + 2 * t + 1] = acc[s][rt][1];
      partial[l][g + 8][rt * 8 + 2 * t] = acc[s][rt][2];
      partial[l][g + 8][rt * 8 + 2 * t + 1] = acc[s][rt][3];
    }
  }
  __syncthreads();
  // the spec's tree over the 32 lane values of each output: lane i + width onto lane i, width 16 .. 1
  for (int o = threadIdx.x; o < RS_MMA_ROWS * 8 * RT; o += blockDim.x) {
    const int row = o / (8 * RT), col = o % (8 * RT);
    float v[RS_LANES];
#pragma unroll
    for (int l = 0; l < RS_LANES; ++l) v[l] = partial[l][row][col];
#pragma unroll
    for (int l = 0; l < 16; ++l) v[l] = rs_add(v[l], v[l + 16]);
#pragma unroll
    for (int l = 0; l < 8; ++l) v[l] = rs_add(v[l], v[l + 8]);
#pragma unroll
    for (int l = 0; l < 4; ++l) v[l] = rs_add(v[l], v[l + 4]);
    v[0] = rs_add(v[0], v[2]);
    v[1] = rs_add(v[1], v[3]);
    v[0] = rs_add(v[0], v[1]);
    const long long nrow = n0 + row;
    if (nrow < n && col < rows) {
      const long long e = (long long)col * n + nrow;
      y[e] = base ? rs_add(base[e], v[0]) : v[0];
    }
  }
}
#endif
