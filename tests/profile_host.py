"""Where a speculative decoding pass's time goes besides the GPU (device machine, for tuning): a model of the
default model's shapes (SmolLM2-135M, random weights) or a GGUF file, its captured passes of 1 and 8 rows
replayed back to back (the device's time) and one at a time with their argmax brought back (what the
speculative loop pays a pass), then the speculative loop itself with the ngram drafter under cProfile.

    python3 tests/profile_host.py [MODEL.gguf]
"""
from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time

from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend
from refspec.speculative import make_drafter, speculative_generate
from refspec.synthetic import write_model

from graph_timing import pass_seconds

if len(sys.argv) > 1:
    path = sys.argv[1]
else:
    path = write_model("/tmp/smol-shaped.gguf", n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3,
                       n_ctx=2048, n_vocab=49152)
tf = Transformer(load(path, log=lambda m: None), GpuBackend())
cache = tf.new_cache(512)
tf.forward(cache, [1] * 64, 0)  # the positions before the timed passes'
for rows in (1, 8):
    ids = list(range(100, 100 + rows))
    replayed = pass_seconds(tf, cache, ids, 64, 300)
    for _ in range(5):
        tf.forward(cache, ids, 64, argmax=True)
    one_by_one = []
    for _ in range(300):
        t0 = time.perf_counter()
        tf.forward(cache, ids, 64, argmax=True)
        one_by_one.append(time.perf_counter() - t0)
    print(f"rows {rows}: replayed back to back {1e3 * replayed:.3f} ms, one at a time with argmax "
          f"{1e3 * statistics.median(one_by_one):.3f} ms (host {1e3 * (statistics.median(one_by_one) - replayed):.3f})")

prompt = list(range(300, 340)) * 4  # a prompt the ngram drafter finds matches in
for chain in (False, True):  # the host loop; the passes chained on the device
    for run in range(3):  # the first records the graphs; the last under cProfile
        profile = cProfile.Profile() if run == 2 else None
        if profile:
            profile.enable()
        t0 = time.perf_counter()
        result = speculative_generate(tf, prompt, 128, drafter=make_drafter("ngram", tf), draft_max=7, eog_ids=(),
                                      chain=chain)
        seconds = time.perf_counter() - t0
        if profile:
            profile.disable()
        s = result.stats
        print(f"chain {chain} run {run}: {seconds * 1e3:.1f} ms, {s['n_passes']} passes, verify {s['verify_ms_mean']} "
              f"ms, single {s['single_step_ms']} ms, drafting {1e3 * s['draft_seconds']:.2f} ms, "
              f"decode {1e3 * s['decode_seconds']:.1f} ms, {s['mean_tokens_per_pass']} tokens a pass")
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)
