// Residual and bias add: the twin of spec.add. out = x + y elementwise, y [ny] repeated over x's rows.
#include "portable.h"

#define RS_ADD_THREADS 256

// x, out float32 [n]; y float32 [ny] with n % ny == 0. Grid: ceil(n / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_ADD_THREADS)
add(const float* __restrict__ x, const float* __restrict__ y, int n, int ny, float* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = rs_add(x[i], y[i % ny]);
}
