// tests/test_ngram_emulated.py's driver: kernels_raw/ngram.hip's kernels run as one emulated thread block
// (tests/cuda_threads.h) on cases read from stdin, their outputs written to stdout, one line a case.
//   P k max_n min_n unigram_max n ctx[n]            -> ngram_propose: the guesses' number, the guesses
//   S width n_pos max_n min_n unigram_max inputs[1 + width] chosen[2 * width] drafted[2] n ctx[n] stop[18]
//                                                   -> speculative_next: drafted[2], record, inputs, ctx[n + width]
#include "cuda_threads.h"
#include "ngram_kernel.inc"  // kernels_raw/ngram.hip, as the test prepares it

static std::vector<int> read_ints(int count) {
  std::vector<int> v(count);
  for (int& x : v) {
    if (scanf("%d", &x) != 1) exit(2);
  }
  return v;
}

static void print(const std::vector<int>& v, size_t count) {
  for (size_t i = 0; i < count; ++i) printf(" %d", v[i]);
}

int main() {
  char kind;
  while (scanf(" %c", &kind) == 1) {
    if (kind == 'P') {
      const std::vector<int> head = read_ints(5);  // k max_n min_n unigram_max n
      const std::vector<int> ctx = read_ints(head[4]);
      std::vector<int> out(1 + head[0], -1);
      rs_run_block([&] { ngram_propose(ctx.data(), head[4], head[0], head[1], head[2], head[3], out.data()); });
      printf("%d", out[0]);
      print(std::vector<int>(out.begin() + 1, out.end()), out[0]);
    } else if (kind == 'S') {
      const std::vector<int> head = read_ints(5);  // width n_pos max_n min_n unigram_max
      const int width = head[0], n_pos = head[1];
      std::vector<int> inputs = read_ints(1 + width), chosen = read_ints(2 * width), drafted = read_ints(2);
      const int n = read_ints(1)[0];
      std::vector<int> ctx = read_ints(n);
      ctx.resize(n_pos + width, 0);
      const std::vector<int> stop = read_ints(18);
      std::vector<int> record(2 + 2 * width, -1);
      rs_run_block([&] {
        speculative_next(inputs.data(), chosen.data(), ctx.data(), drafted.data(), record.data(), stop.data(), width,
                         n_pos, head[2], head[3], head[4]);
      });
      printf("%d %d", drafted[0], drafted[1]);
      print(record, record.size());
      print(inputs, inputs.size());
      print(ctx, std::min<size_t>(ctx.size(), n + width));
    } else {
      return 2;
    }
    printf("\n");
  }
  return 0;
}
