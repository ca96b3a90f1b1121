// Argmax of each row: the twin of spec.argmax. The largest value, the lowest index on ties; every row also
// reports whether it holds NaN or infinity (the wrapper turns that into NumericsError, as the spec does).
// Two launches: parts of each row on many blocks (a vocabulary of 128k values read by one block took tens of
// microseconds of latency), then each row's parts combined.
#include "portable.h"

#define RS_ARGMAX_THREADS 256
#define RS_ARGMAX_PER_THREAD 8  // values a thread of argmax_part reads, all in flight together

// (value, index) <- (v, j) when v is larger, or equal at a lower index; index -1: nothing finite yet. The
// rule picks the spec's answer (the largest value, the lowest index of a tie) whatever the order the
// candidates meet in, so a row may be split into parts and the parts combined in any tree.
RS_DEVICE void rs_argmax_take(float& value, int& index, float v, int j) {
  if (j >= 0 && (index < 0 || v > value || (v == value && j < index))) {
    value = v;
    index = j;
  }
}

// The block's candidates combined into thread 0's (value, index, nonfinite).
RS_DEVICE void rs_argmax_block(float& value, int& index, int& nonfinite) {
  __shared__ float best_value[RS_ARGMAX_THREADS];
  __shared__ int best_index[RS_ARGMAX_THREADS];
  __shared__ int bad[RS_ARGMAX_THREADS];
  const int t = threadIdx.x;
  best_value[t] = value;
  best_index[t] = index;
  bad[t] = nonfinite;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) {
      float v = best_value[t];
      int j = best_index[t];
      rs_argmax_take(v, j, best_value[t + stride], best_index[t + stride]);
      best_value[t] = v;
      best_index[t] = j;
      bad[t] |= bad[t + stride];
    }
    __syncthreads();
  }
  value = best_value[0];
  index = best_index[0];
  nonfinite = bad[0];
}

// Stage 1. logits float32 [rows, n]; part p of a row covers span = ceil(n / parts) values from p * span.
// part_value float32, part_index int32, part_bad int32 [rows, parts]: each part's largest finite value, its
// lowest index (-1 if none) and whether the part holds NaN or infinity. Grid: rows * parts blocks.
// `live`: only the first live[0] rows, or all where null (rs_live_rows).
extern "C" __global__ void __launch_bounds__(RS_ARGMAX_THREADS)
argmax_part(const float* __restrict__ logits, int n, int parts, float* __restrict__ part_value,
            int* __restrict__ part_index, int* __restrict__ part_bad, const int* __restrict__ live) {
  const int row = blockIdx.x / parts, part = blockIdx.x % parts;
  if (row >= rs_live_rows(live, gridDim.x / parts)) return;  // the whole block
  rs_kernel_begin();
  const int span = (n + parts - 1) / parts;
  const int begin = part * span, end = begin + span < n ? begin + span : n;
  const float* x = logits + (long long)row * n;
  float value = 0.0f;
  int index = -1, nonfinite = 0;
  for (int i0 = begin + threadIdx.x; i0 < end; i0 += RS_ARGMAX_PER_THREAD * blockDim.x) {
    float v[RS_ARGMAX_PER_THREAD];
#pragma unroll
    for (int u = 0; u < RS_ARGMAX_PER_THREAD; ++u) {
      const int i = i0 + u * blockDim.x;
      v[u] = i < end ? x[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < RS_ARGMAX_PER_THREAD; ++u) {
      const int i = i0 + u * blockDim.x;
      if (i < end) {
        if (!rs_isfinite(v[u])) nonfinite = 1;
        else rs_argmax_take(value, index, v[u], i);
      }
    }
  }
  rs_argmax_block(value, index, nonfinite);
  if (threadIdx.x == 0) {
    part_value[blockIdx.x] = value;
    part_index[blockIdx.x] = index;
    part_bad[blockIdx.x] = nonfinite;
  }
}

// Stage 2: the parts of each row (parts <= RS_ARGMAX_THREADS) combined. result int32 [rows, 2]: (index, 1
// if the row has NaN or infinity else 0). Grid: rows blocks.
// `live`: only the first live[0] rows, or all where null (rs_live_rows).
extern "C" __global__ void __launch_bounds__(RS_ARGMAX_THREADS)
argmax_final(const float* __restrict__ part_value, const int* __restrict__ part_index,
             const int* __restrict__ part_bad, int parts, int* __restrict__ result, const int* __restrict__ live) {
  if ((int)blockIdx.x >= rs_live_rows(live, gridDim.x)) return;  // the whole block
  rs_kernel_begin();
  const long long at = (long long)blockIdx.x * parts + threadIdx.x;
  const bool mine = threadIdx.x < parts;
  float value = mine ? part_value[at] : 0.0f;
  int index = mine ? part_index[at] : -1, nonfinite = mine ? part_bad[at] : 0;
  rs_argmax_block(value, index, nonfinite);
  if (threadIdx.x == 0) {
    result[2 * blockIdx.x] = index;
    result[2 * blockIdx.x + 1] = nonfinite;
  }
}

#define RS_GREEDY_MAX_STOP 16  // end-of-generation ids greedy_next knows (GpuBackend.stop_buffer keeps the first)

// The next greedy step's input, on the device: inputs int32 [2] = (position, token id) of a captured pass of
// one row (refspec/gpu_graphs.py, greedy_steps) becomes (position + 1, the id argmax chose, result[0]). With
// `live` (the rows the step's kernels compute, rs_live_rows; null: not counted): 0 once the id chosen is one of
// stop's end-of-generation ids (stop int32 [2 + RS_GREEDY_MAX_STOP]: unused, their number, the ids), or once a
// step computed nothing, so that a step queued past the run's end costs only its launches. The host's loop
// stops at the same ids (it may know more: the step then computes a pass for nothing, never skips one the host
// reads). Grid: 1 block of 1 thread.
extern "C" __global__ void greedy_next(const int* __restrict__ result, int* __restrict__ inputs,
                                       int* __restrict__ live, const int* __restrict__ stop) {
  rs_kernel_begin();
  const int token = result[0];
  inputs[0] += 1;
  inputs[1] = token;
  if (live != nullptr) {
    bool end = live[0] == 0;
    const int n_stop = min(stop[1], RS_GREEDY_MAX_STOP);
    for (int i = 0; i < n_stop; ++i) end = end || token == stop[2 + i];
    live[0] = end ? 0 : 1;
  }
}
