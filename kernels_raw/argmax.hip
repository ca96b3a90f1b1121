// Argmax of each row: the twin of spec.argmax. The largest value, the lowest index on ties; every row also
// reports whether it holds NaN or infinity (the wrapper turns that into NumericsError, as the spec does).
#include "portable.h"

#define RS_ARGMAX_THREADS 256

// logits float32 [rows, n]; result int32 [rows, 2]: (index, 1 if the row has NaN or infinity else 0).
// Grid: rows blocks.
extern "C" __global__ void __launch_bounds__(RS_ARGMAX_THREADS)
argmax(const float* __restrict__ logits, int n, int* __restrict__ result) {
  rs_kernel_begin();
  __shared__ float best_value[RS_ARGMAX_THREADS];
  __shared__ int best_index[RS_ARGMAX_THREADS];
  __shared__ int bad[RS_ARGMAX_THREADS];
  const float* row = logits + (long long)blockIdx.x * n;
  const int t = threadIdx.x;
  float value = 0.0f;
  int index = -1, nonfinite = 0;
  for (int i = t; i < n; i += blockDim.x) {  // increasing i: a strict > keeps the lowest index of a tie
    const float v = row[i];
    if (!rs_isfinite(v)) nonfinite = 1;
    else if (index < 0 || v > value) value = v, index = i;
  }
  best_value[t] = value;
  best_index[t] = index;
  bad[t] = nonfinite;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) {
      const float v = best_value[t + stride];
      const int j = best_index[t + stride];
      if (j >= 0 && (best_index[t] < 0 || v > best_value[t] || (v == best_value[t] && j < best_index[t]))) {
        best_value[t] = v;
        best_index[t] = j;
      }
      bad[t] |= bad[t + stride];
    }
    __syncthreads();
  }
  if (t == 0) {
    result[2 * blockIdx.x] = best_index[0];
    result[2 * blockIdx.x + 1] = bad[0];
  }
}

// The next greedy step's input, on the device: inputs int32 [2] = (position, token id) of a captured pass of
// one row (refspec/gpu_graphs.py, greedy_steps) becomes (position + 1, the id argmax chose, result[0]).
// Grid: 1 block of 1 thread.
extern "C" __global__ void greedy_next(const int* __restrict__ result, int* __restrict__ inputs) {
  rs_kernel_begin();
  inputs[0] += 1;
  inputs[1] = result[0];
}
