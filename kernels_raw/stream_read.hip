// A streaming read of a large buffer: the ceiling that refspec's benchmarks measure kernels against (a GEMV
// reads its weights once and writes almost nothing, so a copy, which moves every byte twice, is the wrong
// ceiling). Not part of the spec: it computes nothing anyone uses.
#include "portable.h"

#define RS_STREAM_THREADS 256

// data: n16 units of 16 bytes; out int32 [1] is written only if the folded value hits a constant the data
// does not produce (so the compiler must keep every load). Grid: any; each thread strides over the buffer
// with four loads in flight.
extern "C" __global__ void __launch_bounds__(RS_STREAM_THREADS)
stream_read(const int4* __restrict__ data, long long n16, int* __restrict__ out) {
  rs_kernel_begin();
  const long long stride = (long long)gridDim.x * blockDim.x;
  int acc = 0;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const int4 a = data[i], b = data[i + stride], c = data[i + 2 * stride], d = data[i + 3 * stride];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const int4 a = data[i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x7e57ab1e) out[0] = acc;
}
