// One CUDA thread block emulated by std::threads, for tests/test_ngram_emulated.py: the integer kernels of
// kernels_raw/ngram.hip compiled as C++ (its `#include "portable.h"`, `extern "C"` and `__restrict__` taken
// out by the test) and run by blockDim.x threads of their own, with __syncthreads a std::barrier, __shared__
// variables function statics (one per block, as on the device) and the atomics of <atomic> builtins. It checks
// the kernels' logic and bounds (the test builds it with AddressSanitizer), not the device's memory model.
#pragma once
#include <algorithm>
#include <barrier>
#include <cstdio>
#include <functional>
#include <thread>
#include <vector>

using std::max;
using std::min;

struct RsDim3 {
  int x;
};
inline thread_local RsDim3 threadIdx;
inline RsDim3 blockDim{256};
inline thread_local std::barrier<>* rs_block_barrier;

#define __global__
#define __launch_bounds__(threads)
#define __shared__ static
#define RS_DEVICE static inline

inline void __syncthreads() { rs_block_barrier->arrive_and_wait(); }
inline void rs_kernel_begin() {}

template <typename T>
T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <typename T>
T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <typename T>
T atomicMin(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v > old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}

// Runs body() on blockDim.x threads, as one block. The threads are made once and kept (a pool), each block's
// run between two barriers that the calling thread joins.
class RsBlockPool {
 public:
  RsBlockPool() : start_(blockDim.x + 1), end_(blockDim.x + 1), block_(blockDim.x) {
    for (int t = 0; t < blockDim.x; ++t) {
      threads_.emplace_back([this, t] {
        threadIdx.x = t;
        rs_block_barrier = &block_;
        for (;;) {
          start_.arrive_and_wait();
          if (quit_) return;
          (*body_)();
          end_.arrive_and_wait();
        }
      });
    }
  }
  ~RsBlockPool() {
    quit_ = true;
    start_.arrive_and_wait();
    for (auto& thread : threads_) thread.join();
  }
  template <typename F>
  void run(F& body) {
    std::function<void()> f = body;
    body_ = &f;
    start_.arrive_and_wait();
    end_.arrive_and_wait();
  }

 private:
  std::barrier<> start_, end_, block_;
  std::vector<std::thread> threads_;
  std::function<void()>* body_ = nullptr;
  bool quit_ = false;
};

template <typename F>
void rs_run_block(F body) {
  static RsBlockPool pool;
  pool.run(body);
}
