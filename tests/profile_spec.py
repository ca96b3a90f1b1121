"""Where a chained speculative pass's time goes, on the GPU (device machine, for tuning): on a real context (a
copy prompt of `refspec bench decode`, chat-templated, and its greedy answer), each timed with events over
back-to-back graph replays, no host in between:
  * the greedy step's graph (one-row pass, argmax, greedy_next), as generate() chains it;
  * the speculative pass's graph (draft_max+1 rows, argmax, speculative_next), as speculative_generate chains it;
  * the same pass without the step between passes: forward pass + argmax only (all rows, and computing only
    the first 1 or all draft_max+1 rows: GpuBackend.live_rows), and the forward pass alone;
  * ngram_propose alone on the context (the drafting scan inside speculative_next).

    python3 tests/profile_spec.py MODEL.gguf [DRAFT_MAX] [REPEATS] [WIDTHS]

WIDTHS (e.g. 8,12,16): also time a forward pass + argmax of each of these widths computing 1, 8 and all its
rows, to compare the graph widths a draft_max could use.
"""
from __future__ import annotations

import json
import statistics
import sys

import numpy as np

from refspec.bench_decode import COPY_PROMPTS
from refspec.cli import load_model, load_tokenizer
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gpu import GpuBackend

from graph_timing import graph_seconds, replays_seconds

path = sys.argv[1]
draft_max = int(sys.argv[2]) if len(sys.argv) > 2 else 7
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 30
widths = [int(w) for w in sys.argv[4].split(",")] if len(sys.argv) > 4 else []
model = load_model(path)
tok = load_tokenizer(model)
be = GpuBackend()
cp = be.cp
tf = Transformer(model, be)
width = draft_max + 1
ngram = (4, 1, 7)
report = {"model": path, "draft_max": draft_max}

text = COPY_PROMPTS["edit-code"]
prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
answer = generate(tf, prompt, 48, eog_ids=()).ids
context = prompt + answer
n = len(context)
report["context_tokens"] = n


# the greedy step, chained: positions advance one a replay
cache = tf.new_cache(n + 5 * repeats + 16)  # small, as generate's (attention_plan depends on it)
tf.forward(cache, context[:-1], 0)
steps = tf.graphs.greedy_steps(cache, context[-1], n - 1, 2)
for _ in steps:
    pass
g = cache.graphs["greedy"]
report["greedy_step_ms"] = 1e3 * replays_seconds(cp, g.graph, tf.graphs.stream, 4, repeats)

# the speculative pass, chained: positions advance by its tokens (1 .. width) a replay; each replay repeats
# from the same context (the inputs and context staged again)
cache = tf.new_cache(n + 6 * max([width] + widths), n_states=width + 1)
tf.forward(cache, context[:-1], 0)
passes = tf.graphs.speculative_steps(cache, context, [], width, ngram)
next(passes)
passes.close()
key = ("speculative", width, ngram)
sg = cache.graphs[key]
samples = []
start, end = cp.cuda.Event(), cp.cuda.Event()
with tf.graphs.stream as s:
    for _ in range(repeats):
        tf.graphs._stage_speculative(sg, context, [], be.stop_buffer(None, []), ngram)  # no end: every pass computes
        start.record(s)
        for _ in range(4):
            sg.graph.launch(s)
        end.record(s)
        end.synchronize()
        samples.append(cp.cuda.get_elapsed_time(start, end) / 4)
report["speculative_pass_ms"] = statistics.median(samples)

# the same pass's forward (+ argmax) alone, at the context's end
ids_d = cp.asarray(np.array([context[-1]] * width, np.int32))
pos_d = cp.asarray(np.array([n - 1], np.int32))
report["forward_argmax_ms"] = 1e3 * graph_seconds(
    cp, lambda: be.argmax_device(tf.run(cache, ids_d, pos_d, width)), repeats)
report["forward_ms"] = 1e3 * graph_seconds(cp, lambda: tf.run(cache, ids_d, pos_d, width), repeats)
for count in (1, width):  # the same pass computing only its first `count` rows (GpuBackend.live_rows)
    live = cp.asarray(np.array([count], np.int32))
    be.live_rows(live)
    report[f"forward_argmax_live{count}_ms"] = 1e3 * graph_seconds(
        cp, lambda: be.argmax_device(tf.run(cache, ids_d, pos_d, width)), repeats)
    be.live_rows(None)
for w in widths:  # other graph widths, computing 1, 8 or all their rows
    ids_w = cp.asarray(np.array([context[-1]] * w, np.int32))
    for count in sorted({1, min(8, w), w}):
        live = cp.asarray(np.array([count], np.int32))
        be.live_rows(live)
        report[f"width{w}_live{count}_ms"] = 1e3 * graph_seconds(
            cp, lambda: be.argmax_device(tf.run(cache, ids_w, pos_d, w)), repeats)
        be.live_rows(None)
report["forward_1row_argmax_ms"] = 1e3 * graph_seconds(
    cp, lambda: be.argmax_device(tf.run(cache, ids_d[:1], pos_d, 1)), repeats)

# the drafting scan alone (ngram_propose) on the context
ctx = cp.asarray(np.array(context, np.int32))
out = cp.zeros(1 + draft_max, np.int32)
fn = be.function("ngram", "ngram_propose")
report["ngram_propose_us"] = 1e6 * graph_seconds(
    cp, lambda: fn((1,), (256,), (ctx, np.int32(n), np.int32(draft_max), np.int32(ngram[0]), np.int32(ngram[1]),
                                  np.int32(ngram[2]), out)), repeats)
logits = cp.zeros((width, tf.config.n_vocab), np.float32)
report["argmax_rows_us"] = 1e6 * graph_seconds(cp, lambda: be.argmax_device(logits), repeats)
report["argmax_1row_us"] = 1e6 * graph_seconds(cp, lambda: be.argmax_device(logits[:1]), repeats)
print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}, indent=1))
