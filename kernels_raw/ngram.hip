// Self-speculative decoding's step between two verify passes, on the device, so that the passes can be queued
// back to back (refspec/gpu_graphs.py, speculative_steps): the accept rule of refspec/speculative.py over the
// pass's argmax rows, then the next pass's guesses by refspec.speculative.NgramDrafter's rule, found by a scan
// of the context instead of the drafter's index (the same proposal: tests/test_gpu_graphs.py compares them).
// Integers only: no float operation, so nothing here can differ between backends.
#include "portable.h"

#define RS_NGRAM_THREADS 256  // one thread block
#define RS_NGRAM_KEPT 2048    // occurrences of an n-gram compared in shared memory; more are counted in global memory
#define RS_NGRAM_MAX_N 8      // longest n-gram (the wrapper checks)
#define RS_NGRAM_MAX_K 16     // most guesses a pass (the wrapper checks)
#define RS_NGRAM_MAX_STOP 16  // end-of-generation ids the step knows (GpuBackend.speculative_next keeps the first)

// How many tokens before position e (at most cap) equal the context's last ones: the largest l <= cap with
// ctx[e-l .. e) == ctx[len-l .. len), where back[j] = ctx[len-1-j] (the trailing tokens, newest first).
RS_DEVICE int rs_ngram_match(const int* ctx, int e, int cap, const int* back) {
  int l = 0;
  while (l < cap && ctx[e - 1 - l] == back[l]) ++l;
  return l;
}

// NgramDrafter's proposal for the context ctx[0 .. len), into out[0 .. k'), returning k' (0: none). For n from
// min(max_n, len - 1) down to min_n: the places e (n <= e < len) where the trailing n-gram ended before, each
// followed by the token ctx[e]; of those tokens the one that followed most often, ties to the one that
// followed first; the guesses are what followed the n-gram where that token first followed it: ctx[e ..], at
// most k (at most unigram_max for n = 1), running into the present as a copy of period len - e.
// The first n with a place is the longest match before any e: one scan finds it (each e's match length, the
// block's largest). Each place's count and first place come from comparing it with every other (kept in
// shared memory up to RS_NGRAM_KEPT, else read again from the context); the best is the largest (count, -first)
// key. Every thread of the block calls it, with no thread inside a branch the others skip; out is shared.
RS_DEVICE int rs_ngram_propose(const int* ctx, int len, int k, int max_n, int min_n, int unigram_max, int* out) {
  __shared__ int kept_at[RS_NGRAM_KEPT], kept_token[RS_NGRAM_KEPT], back[RS_NGRAM_MAX_N];
  __shared__ int longest, found;
  __shared__ unsigned long long best;  // (count << 32) | (0x7fffffff - first place): the largest wins
  const int cap = min(max_n, len - 1);
  if (threadIdx.x < cap) back[threadIdx.x] = ctx[len - 1 - threadIdx.x];
  if (threadIdx.x == 0) {
    longest = 0;
    found = 0;
    best = 0;
  }
  __syncthreads();
  int mine = 0;
  for (int e = 1 + threadIdx.x; e < len; e += blockDim.x) mine = max(mine, rs_ngram_match(ctx, e, min(cap, e), back));
  if (mine > 0) atomicMax(&longest, mine);
  __syncthreads();
  const int n = longest;  // the same for every thread
  if (n < min_n || n == 0) return 0;
  for (int e = n + threadIdx.x; e < len; e += blockDim.x) {
    if (rs_ngram_match(ctx, e, n, back) == n) {
      const int slot = atomicAdd(&found, 1);
      if (slot < RS_NGRAM_KEPT) {
        kept_at[slot] = e;
        kept_token[slot] = ctx[e];
      }
    }
  }
  __syncthreads();
  const int m = found;
  unsigned long long key = 0;
  if (m <= RS_NGRAM_KEPT) {
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
      int count = 0, first = kept_at[i];
      for (int j = 0; j < m; ++j) {
        if (kept_token[j] == kept_token[i]) {
          ++count;
          first = min(first, kept_at[j]);
        }
      }
      key = max(key, ((unsigned long long)count << 32) | (unsigned)(0x7fffffff - first));
    }
  } else {
    for (int e = n + threadIdx.x; e < len; e += blockDim.x) {
      if (rs_ngram_match(ctx, e, n, back) != n) continue;
      int count = 0, first = e;
      for (int f = n; f < len; ++f) {
        if (ctx[f] == ctx[e] && rs_ngram_match(ctx, f, n, back) == n) {
          ++count;
          first = min(first, f);
        }
      }
      key = max(key, ((unsigned long long)count << 32) | (unsigned)(0x7fffffff - first));
    }
  }
  if (key) atomicMax(&best, key);
  __syncthreads();
  const int from = 0x7fffffff - (int)(best & 0xffffffffu);  // n <= from < len
  const int guesses = n == 1 ? min(k, unigram_max) : k;
  // the copy, period len - from where it runs into the present: guess j is ctx[from + j % period]
  if (threadIdx.x < guesses) out[threadIdx.x] = ctx[from + threadIdx.x % (len - from)];
  __syncthreads();
  return guesses;
}

// The step after a verify pass of `width` rows (captured with the pass). inputs int32 [1 + width]: the pass's
// first position, then its ids (the newest token, then its guesses; drafted[0] of them are real, the rest
// fill the width); chosen int32 [width, 2]: each row's argmax and its NaN-or-infinity flag. Accept rule
// (refspec/speculative.py): guess j is accepted while row j's argmax is finite and equals it; the rows up to
// the first rejection (or the last real guess) give the pass's tokens. The pass computed only its first
// drafted[0] + 1 rows (rs_live_rows): the others' (id, flag) are stale and never looked at. record int32
// [2 + 2 * width] gets the tokens' number, the pass's real guesses and every row's (id, flag) (the host reads
// the tokens from it); ctx int32 [n_pos + width] (the context, token at each position) gets the tokens; then
// inputs and drafted are the next pass's: the last token at the position after the others, the proposal for
// the context (padded with that token), its length and that + 1, drafted int32 [2]. stop int32
// [2 + RS_NGRAM_MAX_STOP]: the run's context limit (its prompt plus its token budget), the number of its
// end-of-generation ids, the ids. When the pass's tokens end the run as the host's loop ends it (one of them
// is such an id, or the context reaches the limit), or the pass computed nothing (the run had ended before
// it), the next pass computes nothing either: drafted[1] = 0 (rs_live_rows), and a pass queued past the end
// costs only its launches. A next pass that would not fit the cache's n_pos positions is put at its end: the
// host never reads it (it reads a step behind and stops before the cache's end). Each row, token and id is
// looked at by a thread of its own (the step is on the path of every pass). Grid: 1 block.
extern "C" __global__ void __launch_bounds__(RS_NGRAM_THREADS)
speculative_next(int* __restrict__ inputs, const int* __restrict__ chosen, int* __restrict__ ctx,
                 int* __restrict__ drafted, int* __restrict__ record, const int* __restrict__ stop, int width,
                 int n_pos, int max_n, int min_n, int unigram_max) {
  rs_kernel_begin();
  __shared__ int rejected, ended;
  __shared__ int proposal[RS_NGRAM_MAX_K];
  const int t = threadIdx.x;
  const int pos0 = inputs[0], real = drafted[0], computed = drafted[1];
  // the accept rule: the first row whose argmax is not finite or not its guess
  const bool wrong = t < real && (chosen[2 * t + 1] != 0 || chosen[2 * t] != inputs[2 + t]);
  if (t == 0) {
    rejected = real;
    ended = computed == 0;
  }
  __syncthreads();
  if (wrong) atomicMin(&rejected, t);
  if (t < 2 * width) record[2 + t] = chosen[t];
  __syncthreads();
  const int ok = rejected;  // the guesses accepted; the pass's tokens are rows 0 .. ok
  const int len = pos0 + ok + 2;  // the context up to the pass's last token
  if (t == 0) {
    record[0] = ok + 1;
    record[1] = real;
  }
  if (t <= ok) {
    const int token = chosen[2 * t];
    ctx[pos0 + 1 + t] = token;
    const int n_stop = min(stop[1], RS_NGRAM_MAX_STOP);
    bool end = t == 0 && len >= stop[0];
    for (int i = 0; i < n_stop; ++i) end = end || token == stop[2 + i];
    if (end) atomicOr(&ended, 1);
  }
  __syncthreads();  // the tokens are in ctx for every thread
  const int guesses = rs_ngram_propose(ctx, len, width - 1, max_n, min_n, unigram_max, proposal);
  const int last = ctx[len - 1];
  if (t == 0) {
    inputs[0] = min(len - 1, n_pos - width);
    inputs[1] = last;
    drafted[0] = guesses;
    drafted[1] = ended ? 0 : guesses + 1;  // the rows the next pass's kernels compute (rs_live_rows)
  }
  if (t < width - 1) inputs[2 + t] = t < guesses ? proposal[t] : last;
}

// The proposal alone, for tests: out int32 [1 + k] = (its length, the guesses). Grid: 1 block.
extern "C" __global__ void __launch_bounds__(RS_NGRAM_THREADS)
ngram_propose(const int* __restrict__ ctx, int len, int k, int max_n, int min_n, int unigram_max,
              int* __restrict__ out) {
  rs_kernel_begin();
  __shared__ int proposal[RS_NGRAM_MAX_K];
  const int guesses = rs_ngram_propose(ctx, len, k, max_n, min_n, unigram_max, proposal);
  if (threadIdx.x == 0) {
    out[0] = guesses;
    for (int j = 0; j < guesses; ++j) out[1 + j] = proposal[j];
  }
}
