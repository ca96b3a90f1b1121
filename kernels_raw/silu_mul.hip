// SiLU(gate) * up: the twin of spec.silu_mul. out = (g / (1 + exp(-g))) * u, with refspec_exp.
#include "portable.h"
#include "exp.h"

#define RS_SILU_MUL_THREADS 256

// gate, up, out float32 [n]. Grid: ceil(n / threads) blocks.
extern "C" __global__ void __launch_bounds__(RS_SILU_MUL_THREADS)
silu_mul(const float* __restrict__ gate, const float* __restrict__ up, int n, float* __restrict__ out) {
  rs_kernel_begin();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = rs_silu_mul(gate[i], up[i]);
}
