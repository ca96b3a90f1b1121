// The conditions of a chained pass's conditional graph nodes (refspec/gpu_conditional.py; NVIDIA, CUDA 12.4+),
// from the live-row count the step before the pass wrote (rs_live_rows): a pass that guesses nothing (count 1)
// runs its one-row body, a pass that guesses (count > 1) its body of all rows, a pass queued past a run's end
// (count 0) neither. One SWITCH node (CUDA 12.8+ drivers) takes the value min(count, 2) from pass_branch; on
// older drivers two IF nodes take `one` = (count == 1) and `many` = (count > 1) from pass_conditions.
// Nothing here touches a value of the pass: it only chooses which captured kernels run.
#include "portable.h"

#if !defined(RS_HIP)
extern "C" __device__ void cudaGraphSetConditional(unsigned long long handle, unsigned int value);
#endif

// Grid: 1 block of 1 thread.
extern "C" __global__ void pass_conditions(unsigned long long one, unsigned long long many, const int* live,
                                           int rows) {
  rs_kernel_begin();
#if !defined(RS_HIP)
  const int n = rs_live_rows(live, rows);
  cudaGraphSetConditional(one, n == 1);
  cudaGraphSetConditional(many, n > 1);
#else
  (void)one, (void)many, (void)live, (void)rows;
#endif
}

// Grid: 1 block of 1 thread.
extern "C" __global__ void pass_branch(unsigned long long branch, const int* live, int rows) {
  rs_kernel_begin();
#if !defined(RS_HIP)
  const int n = rs_live_rows(live, rows);
  cudaGraphSetConditional(branch, n < 2 ? n : 2);
#else
  (void)branch, (void)live, (void)rows;
#endif
}
