// qwen35's Gated DeltaNet and gated-attention operations (refspec/spec.py, "Gated DeltaNet and gated
// attention"; SPEC.md, "Hybrid models"), each the twin of its spec function. Reductions run on groups of 32
// threads in spec.lane_sum's order (lane_sum.h); the recurrence runs row after row inside one group, so the
// number of rows changes no bits. The Python wrappers (refspec/gpu.py, GpuBackend's qwen35 methods) own the
// grids and check the shapes.
#include "portable.h"
#include "lane_sum.h"
#include "exp.h"
#include "log1p.h"
#include "quantize.h"

#define RS_DELTANET_THREADS 128  // 4 groups of 32 per block
#define RS_ELEMENTWISE_THREADS 256
#define RS_DELTA_MAX_DK 256  // key dimension a delta-rule group holds in registers: 8 values per lane

RS_DEVICE float rs_sigmoid(float x) { return rs_div(1.0f, rs_add(1.0f, refspec_exp(-x))); }

// spec.silu: out = x / (1 + exp(-x)). x, out float32 [n].
extern "C" __global__ void __launch_bounds__(RS_ELEMENTWISE_THREADS)
silu(const float* __restrict__ x, long long n, float* __restrict__ out) {
  rs_kernel_begin();
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = rs_silu(x[i]);
}

// spec.sigmoid_gate: out = a * (1 / (1 + exp(-g))). a, g, out float32 [n].
extern "C" __global__ void __launch_bounds__(RS_ELEMENTWISE_THREADS)
sigmoid_gate(const float* __restrict__ a, const float* __restrict__ g, long long n, float* __restrict__ out) {
  rs_kernel_begin();
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = rs_mul(a[i], rs_sigmoid(g[i]));
}

// quantize_q8(sigmoid_gate(a, gate)) over rows of k = heads * dim (spec.quantize_q8_0 of spec.sigmoid_gate):
// a [rows, heads, dim] contiguous; gate [rows, heads, dim] with R-rows g_stride and heads g_head_stride floats
// apart (the gates between the queries of qwen35's Q projection). One group of 32 lanes per block of 32, lane l
// holding the block's value l. k % 32 == 0 (the wrapper checks).
extern "C" __global__ void __launch_bounds__(RS_DELTANET_THREADS)
sigmoid_gate_q8(const float* __restrict__ a, const float* __restrict__ gate, long long g_stride,
                long long g_head_stride, int dim, int k, long long n_blocks, signed char* __restrict__ xq,
                unsigned short* __restrict__ xd) {
  rs_kernel_begin();
  const long long blk = (long long)blockIdx.x * rs_groups() + rs_group();
  if (blk >= n_blocks) return;  // the whole group leaves together
  const long long e = blk * RS_QK + rs_lane();  // index in the [rows, k] values
  const long long r = e / k;
  const int c = (int)(e % k), h = c / dim, d = c % dim;
  const float y = rs_mul(a[e], rs_sigmoid(gate[r * g_stride + h * g_head_stride + d]));
  rs_quantize_block_lanes(y, xq + blk * RS_QK, xd + blk);
}

// spec.deltanet_gates of one (row, head): decay = exp(softplus(alpha + dt) * a), beta = sigmoid(b); softplus(t) =
// t above 20, else log1p(exp(t)). Shared by deltanet_gates and the delta rule with its gates (same bits).
RS_DEVICE void rs_deltanet_gates(float alpha, float b, float dt, float a, float& decay, float& beta) {
  const float t = rs_add(alpha, dt);
  const float sp = t > 20.0f ? t : refspec_log1p(refspec_exp(t));
  decay = refspec_exp(rs_mul(sp, a));
  beta = rs_sigmoid(b);
}

// spec.deltanet_gates over [rows, heads].
extern "C" __global__ void __launch_bounds__(RS_ELEMENTWISE_THREADS)
deltanet_gates(const float* __restrict__ alpha, const float* __restrict__ b, const float* __restrict__ dt,
               const float* __restrict__ a, int heads, long long n, float* __restrict__ decay,
               float* __restrict__ beta) {
  rs_kernel_begin();
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int h = (int)(i % heads);
  rs_deltanet_gates(alpha[i], b[i], dt[h], a[h], decay[i], beta[i]);
}

// The row norms below take x as [R, heads, n] whose R-rows lie x_stride floats apart (a column slice of a
// stacked GEMV's output: qwen35's q and k heads inside the conv's output); each of the R * heads rows of n is
// normed by one group of 32, out is contiguous [R * heads, n].
RS_DEVICE const float* rs_head_row(const float* x, long long x_stride, int heads, int n, long long row) {
  return x + (row / heads) * x_stride + (row % heads) * n;
}

// spec.l2norm over rows of n: out = x * (1 / sqrt(lane_sum(x*x) + eps)).
extern "C" __global__ void __launch_bounds__(RS_DELTANET_THREADS)
l2norm(const float* __restrict__ x, long long x_stride, int heads, float eps, long long rows, int n,
       float* __restrict__ out) {
  rs_kernel_begin();
  const long long row = (long long)blockIdx.x * rs_groups() + rs_group();
  if (row >= rows) return;  // the whole group leaves together
  const float* xr = rs_head_row(x, x_stride, heads, n, row);
  float acc = 0.0f;
  for (int i = rs_lane(); i < n; i += RS_LANES) acc = rs_add(acc, rs_mul(xr[i], xr[i]));
  const float inv = rs_div(1.0f, rs_sqrt(rs_add(rs_lane_tree(acc), eps)));
  for (int i = rs_lane(); i < n; i += RS_LANES) out[row * n + i] = rs_mul(xr[i], inv);
}

// spec.gated_rmsnorm over rows of n: ((x * inv) * w) * silu(z), inv as spec.rmsnorm; x contiguous, z as x
// above (z_stride). To out (if not null) and, if xq is not null, quantized (spec.quantize_q8_0 of the
// [R, heads * n] rows; the wrapper asks it only when n is a multiple of 32, so that every block of 32 lies in
// one row: the group quantizes the block it just computed, lane l holding its value l).
extern "C" __global__ void __launch_bounds__(RS_DELTANET_THREADS)
gated_rmsnorm(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ z,
              long long z_stride, int heads, float eps, long long rows, int n, float* __restrict__ out,
              signed char* __restrict__ xq, unsigned short* __restrict__ xd) {
  rs_kernel_begin();
  const long long row = (long long)blockIdx.x * rs_groups() + rs_group();
  if (row >= rows) return;
  const float* xr = x + row * n;
  const float* zr = rs_head_row(z, z_stride, heads, n, row);
  float acc = 0.0f;
  for (int i = rs_lane(); i < n; i += RS_LANES) acc = rs_add(acc, rs_mul(xr[i], xr[i]));
  const float inv = rs_div(1.0f, rs_sqrt(rs_add(rs_div(rs_lane_tree(acc), (float)n), eps)));
  for (int i = rs_lane(); i < n; i += RS_LANES) {  // (n % 32 == 0 when quantizing: every lane runs each round)
    const float y = rs_mul(rs_mul(rs_mul(xr[i], inv), w[i]), rs_silu(zr[i]));
    if (out) out[row * n + i] = y;
    if (xq) {
      const long long first = row * n + (i - rs_lane());  // the block's first value in the [R, heads * n] rows
      rs_quantize_block_lanes(y, xq + first, xd + first / RS_QK);
    }
  }
}

// The recurrent-state rings (spec.ring_slots): the state after position p lives in slot p % n_states. A pass
// from pos0 (read from device memory, pos[0], so that one captured pass serves every position) continues the
// state in slot (pos0 - 1) % n_states, zeros at pos0 = 0, and leaves row r's state in slot (pos0 + r) % n_states.
RS_DEVICE int rs_read_slot(int pos0, int n_states) { return pos0 > 0 ? (pos0 - 1) % n_states : -1; }

// Copies the state a pass from pos[0] continues, ring[read slot] [size], to out (zeros at position 0): the
// conv1d's input when its rows would overwrite that slot while other threads still read it.
extern "C" __global__ void __launch_bounds__(RS_ELEMENTWISE_THREADS)
ring_read(const float* __restrict__ ring, const int* __restrict__ pos, int n_states, long long size,
          float* __restrict__ out) {
  rs_kernel_begin();
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= size) return;
  const int read = rs_read_slot(pos[0], n_states);
  out[i] = read >= 0 ? ring[read * size + i] : 0.0f;
}

// spec.conv1d_causal (then spec.silu when apply_silu: the fused conv1d_silu). x [rows, C] with row stride
// x_stride (a column slice of a stacked GEMV's output); w [C, K]; y [rows, C]. The state before row 0 (the K-1
// inputs before it, oldest first, [C, K-1]) is src[(pos0 - 1) % src_slots] (zeros at pos0 = 0): the ring itself
// (src_slots = n_states) when no row's slot can be the one read (rows < n_states), else ring_read's copy
// (src_slots = 1), since a slot must not be read by one group while another writes it. One group per (row,
// channel): lane t takes taps t, t+32, ... of w[c, t] * in[r + t, c] (in = the state's rows, then x's), then
// the tree. The state after row r (in[r+1 .. r+K-1]) goes to ring[(pos0 + r) % n_states] for the last
// n_states rows (earlier rows' slots would be overwritten by later rows anyway).
extern "C" __global__ void __launch_bounds__(RS_DELTANET_THREADS)
conv1d_causal(const float* __restrict__ x, long long x_stride, const float* src, int src_slots,
              const float* __restrict__ w, int rows, int channels, int taps, int apply_silu,
              float* __restrict__ y, float* ring, const int* __restrict__ pos, int n_states) {
  rs_kernel_begin();
  const long long item = (long long)blockIdx.x * rs_groups() + rs_group();
  if (item >= (long long)rows * channels) return;
  const int r = (int)(item / channels), c = (int)(item % channels);
  const int hist = taps - 1, pos0 = pos[0];
  const int read = rs_read_slot(pos0, src_slots);
  const float* state = read >= 0 ? src + (long long)read * channels * hist : nullptr;
  float acc = 0.0f;
  for (int t = rs_lane(); t < taps; t += RS_LANES) {
    const int j = r + t;  // row of `in`
    const float v = j < hist ? (state ? state[(long long)c * hist + j] : 0.0f)
                             : x[(long long)(j - hist) * x_stride + c];
    acc = rs_add(acc, rs_mul(w[(long long)c * taps + t], v));
  }
  const float sum = rs_lane_tree(acc);
  if (rs_lane() == 0) y[(long long)r * channels + c] = apply_silu ? rs_silu(sum) : sum;
  if (r >= rows - n_states) {  // keep the state after this row
    float* slot = ring + ((long long)((pos0 + r) % n_states) * channels + c) * hist;
    for (int t = rs_lane(); t < hist; t += RS_LANES) {
      const int j = r + 1 + t;
      slot[t] = j < hist ? (state ? state[(long long)c * hist + j] : 0.0f) : x[(long long)(j - hist) * x_stride + c];
    }
  }
}

// spec.delta_rule over `rows` rows. q, k [rows, Hk, Dk] (L2-normalised), v [rows, Hv, Dv], each R-row q_stride,
// k_stride, v_stride floats after the last (views into the conv's output); g1, g2 [rows, Hv] (g1_stride,
// g2_stride apart): decay and beta, or, when dt and a are given, the alpha and beta projections, turned into decay and
// beta here as deltanet_gates does (the fused gated_delta_rule); out [rows, Hv, Dv]; ring [n_states, Hv, Dv,
// Dk]; the state before row 0 is ring[(pos0 - 1) % n_states] (zeros at pos0 = 0; pos0 = pos[0], read from
// device memory). One
// group per (value head h, value index i) keeps row i of head h's state in registers (lane l: elements
// l, l+32, ...) and runs the rows one after another, as spec.delta_rule_step does; value head h reads key
// head h % Hk. The state after row r goes to ring[(pos0 + r) % n_states] for the last n_states rows; each
// group reads its own state row before it writes any, so `read` may be one of the slots written.
extern "C" __global__ void __launch_bounds__(RS_DELTANET_THREADS)
delta_rule(const float* __restrict__ q, long long q_stride, const float* __restrict__ k, long long k_stride,
           const float* __restrict__ v, long long v_stride, const float* __restrict__ g1, long long g1_stride,
           const float* __restrict__ g2, long long g2_stride, const float* __restrict__ dt,
           const float* __restrict__ a, int rows, int n_k_heads, int n_v_heads, int dim, float* ring,
           const int* __restrict__ pos, int n_states, float* __restrict__ out) {
  rs_kernel_begin();
  const long long item = (long long)blockIdx.x * rs_groups() + rs_group();
  if (item >= (long long)n_v_heads * dim) return;
  const int pos0 = pos[0], read = rs_read_slot(pos0, n_states);
  const int h = (int)(item / dim), i = (int)(item % dim), kh = h % n_k_heads, lane = rs_lane();
  const long long state_row = ((long long)h * dim + i) * dim;  // within one slot
  const long long slot_size = (long long)n_v_heads * dim * dim;
  const float scale = rs_div(1.0f, rs_sqrt((float)dim));
  float s[RS_DELTA_MAX_DK / RS_LANES];
#pragma unroll
  for (int m = 0; m < RS_DELTA_MAX_DK / RS_LANES; ++m) {
    const int j = lane + m * RS_LANES;
    s[m] = (read >= 0 && j < dim) ? ring[read * slot_size + state_row + j] : 0.0f;
  }
  for (int r = 0; r < rows; ++r) {
    const float* kr = k + r * k_stride + (long long)kh * dim;
    const float* qr = q + r * q_stride + (long long)kh * dim;
    float dec = g1[r * g1_stride + h], b = g2[r * g2_stride + h];
    if (dt) rs_deltanet_gates(dec, b, dt[h], a[h], dec, b);
    float acc = 0.0f;
#pragma unroll
    for (int m = 0; m < RS_DELTA_MAX_DK / RS_LANES; ++m) {
      const int j = lane + m * RS_LANES;
      if (j < dim) {
        s[m] = rs_mul(s[m], dec);
        acc = rs_add(acc, rs_mul(s[m], kr[j]));
      }
    }
    const float d = rs_mul(rs_sub(v[r * v_stride + (long long)h * dim + i], rs_lane_tree(acc)), b);
    float acc_o = 0.0f;
#pragma unroll
    for (int m = 0; m < RS_DELTA_MAX_DK / RS_LANES; ++m) {
      const int j = lane + m * RS_LANES;
      if (j < dim) {
        s[m] = rs_add(s[m], rs_mul(kr[j], d));
        acc_o = rs_add(acc_o, rs_mul(s[m], rs_mul(qr[j], scale)));
      }
    }
    const float o = rs_lane_tree(acc_o);
    if (lane == 0) out[((long long)r * n_v_heads + h) * dim + i] = o;
    if (r >= rows - n_states) {
      float* slot = ring + (long long)((pos0 + r) % n_states) * slot_size + state_row;
#pragma unroll
      for (int m = 0; m < RS_DELTA_MAX_DK / RS_LANES; ++m) {
        const int j = lane + m * RS_LANES;
        if (j < dim) slot[j] = s[m];
      }
    }
  }
}
