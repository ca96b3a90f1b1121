// Residual and bias add: the twin of spec.add. out = x + y elementwise, y [ny] repeated over x's rows.
#include "portable.h"

#define RS_ADD_THREADS 256

// x: rows of `row` floats, row r starting at x + r * stride (stride == row when x is contiguous; a view of a
// stacked GEMV output otherwise); y float32 [ny] with row % ny == 0; out float32 [n] contiguous, n = rows * row.
// Grid: ceil(n / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_ADD_THREADS)
add(const float* __restrict__ x, long long stride, int row, const float* __restrict__ y, int n, int ny,
    float* __restrict__ out) {
  rs_kernel_begin();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = rs_add(x[(long long)(i / row) * stride + i % row], y[i % ny]);
}
