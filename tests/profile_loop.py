"""What the decoding loops add to their graphs, on the GPU (device machine, for tuning): from a real context (a
copy prompt of `refspec bench decode`, chat-templated, and the start of its greedy answer), the same N passes
timed three ways, each from the same state:
  * replays: the pass's graph launched N times back to back, timed with events (the device alone);
  * replays + copies: the same, each followed by the copy of its result to pinned host memory and an event, as
    the loops queue them (still no host in between);
  * loop: PassGraphs.greedy_steps / speculative_steps as generate() and speculative_generate() drive them (the
    host reads each step's result, one step behind), timed on the host from the first step read to the last;
  * dead replays: the graph replayed with no live rows, as the pass queued past a run's end runs (its kernels
    launch and return).
For the greedy step and for the chained speculative pass (draft_max + 1 rows, the ngram drafter on the device).

    python3 tests/profile_loop.py MODEL.gguf [DRAFT_MAX] [N] [REPEATS]
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from refspec.bench_decode import COPY_PROMPTS
from refspec.cli import load_model, load_tokenizer
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gpu import GpuBackend

path = sys.argv[1]
draft_max = int(sys.argv[2]) if len(sys.argv) > 2 else 7
n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 9
model = load_model(path)
tok = load_tokenizer(model)
be = GpuBackend()
cp = be.cp
tf = Transformer(model, be)
graphs = tf.graphs
width, ngram = draft_max + 1, (4, 1, 7)
prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": COPY_PROMPTS["edit-code"]}],
                                            add_generation_prompt=True))
context = prompt + generate(tf, prompt, 24, eog_ids=()).ids
size = len(context) + width * (n + 4)  # at most width positions a pass; <= 512 here, as the bench's caches (attention_plan)
report = {"model": path, "draft_max": draft_max, "context_tokens": len(context), "passes": n}


the_cache = tf.new_cache(size, n_states=width + 1)  # one cache (its graphs are kept on it)


def fresh_cache():
    """The cache with the context's rows written again (the passes after it rewrite theirs)."""
    cache = the_cache
    tf.forward(cache, context[:-1], 0)
    be.synchronize()
    return cache


def timed_on_device(launch_one) -> float:
    start, end = cp.cuda.Event(), cp.cuda.Event()
    with graphs.stream as s:
        start.record(s)
        for i in range(n):
            launch_one(i)
        end.record(s)
        end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / n


def median_ms(run) -> float:
    return round(statistics.median(run() for _ in range(repeats)), 4)


for kind in ("greedy", "speculative"):
    def start_state(dead: bool = False):
        """A fresh cache at the context's end, the kind's graph staged for its first pass (not run), with no
        live rows if `dead`; returns (cache, graph)."""
        cache = fresh_cache()
        if kind == "greedy":
            steps = graphs.greedy_steps(cache, context[-1], len(context) - 1, 1)  # captures once
            next(steps, None)
            steps.close()
            cache = fresh_cache()
            g = cache.graphs["greedy"]
            g.state.set(np.concatenate([[len(context) - 1, context[-1], 0 if dead else 1],
                                        be.stop_buffer(None, [])]).astype(np.int32))
        else:
            steps = graphs.speculative_steps(cache, context, None, width, ngram)
            next(steps)
            steps.close()
            cache = fresh_cache()
            g = cache.graphs[("speculative", width, ngram)]
            with graphs.stream:
                # (dead: the run's limit is the context's length, so the step before the first pass ends it)
                graphs._stage_speculative(g, context, None, be.stop_buffer(len(context) if dead else None, []),
                                          ngram)
        be.synchronize()
        graphs.stream.synchronize()
        return cache, g

    def replays():
        cache, g = start_state()
        return timed_on_device(lambda i: g.graph.launch(graphs.stream))

    def replays_dead():
        cache, g = start_state(dead=True)
        return timed_on_device(lambda i: g.graph.launch(graphs.stream))

    def replays_copies():
        cache, g = start_state()
        return timed_on_device(lambda i: graphs._queue_step(g, i))

    def loop():
        cache = fresh_cache()
        if kind == "greedy":
            steps = graphs.greedy_steps(cache, context[-1], len(context) - 1, n + 2)
        else:
            steps = graphs.speculative_steps(cache, context, None, width, ngram)
        next(steps)
        t0 = time.perf_counter()
        for _ in range(n):
            next(steps)
        t1 = time.perf_counter()
        steps.close()
        return 1e3 * (t1 - t0) / n

    report[f"{kind}_replays_ms"] = median_ms(replays)
    report[f"{kind}_replays_copies_ms"] = median_ms(replays_copies)
    report[f"{kind}_loop_ms"] = median_ms(loop)
    report[f"{kind}_dead_replays_ms"] = median_ms(replays_dead)
print(json.dumps(report, indent=1))
