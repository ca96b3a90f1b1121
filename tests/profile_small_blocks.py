"""Block sizes of silu_mul_q8 (after the gate/up GEMV) and rmsnorm_q8 (after the output and down projections, which
add the residual) in whole passes (device machine, for tuning): the pass of R rows of a preset model or a GGUF file
at position 64, replayed as its graph, with refspec.gpu.SILU_Q8_THREADS and RMSNORM_Q8_THREADS set per variant,
each variant in turn, ROUNDS times. Every block size gives the same bits (tests/test_gpu_fused.py
draws the shapes; the pass's logits are compared here too). Kernel changes measured with it and not kept:
rope_kv in blocks of 4 (row, head) slots (tests/results/small_blocks_llama8b_h200.json) and rmsnorm_q8 with 4
loads a thread in flight (rmsnorm_stage4_tried_llama8b_h200.json, variants named *s4).

    python3 tests/profile_small_blocks.py PRESET|MODEL.gguf [ROWS,...] [REPEATS] [ROUNDS] [JSON] [VARIANT...]

A variant is LABEL=SILU[,RMSNORM] (threads a block of each; RMSNORM left out: main's), e.g. before=128,128
main=512.
"""
from __future__ import annotations

import json
import sys

import numpy as np

import refspec.gpu
from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend

from graph_timing import pass_seconds

preset = sys.argv[1]
widths = [int(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 8, 16]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 50
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
default = refspec.gpu.SILU_Q8_THREADS, refspec.gpu.RMSNORM_Q8_THREADS
variants = {label: tuple(int(v) for v in spec.split(",")) + default[len(spec.split(",")):]
            for label, spec in (a.split("=") for a in sys.argv[6:])}
variants = variants or {"before": (128, 128), "main": default}
position = 64
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
report = {"model": preset, "position": position, "repeats": repeats, "variants": variants, "ms": {}}
cache = tf.new_cache(position + max(widths) + 8)
tf.forward(cache, [1] * position, 0)
logits = {}
for _ in range(rounds):
    for name, (silu, rmsnorm) in variants.items():
        refspec.gpu.SILU_Q8_THREADS, refspec.gpu.RMSNORM_Q8_THREADS = silu, rmsnorm
        cache.graphs.clear()  # capture the passes again with these blocks
        for rows in widths:
            ms = round(1e3 * pass_seconds(tf, cache, [5] * rows, position, repeats), 4)
            report["ms"].setdefault(f"{name} rows={rows}", []).append(ms)
            print(f"{name:10s} rows={rows:3d} {ms:.4f} ms", flush=True)
            out = be.to_host(tf.forward(cache, [5] * rows, position)).view(np.uint32)
            assert np.array_equal(logits.setdefault(rows, out), out), f"{name} at {rows} rows: other bits"
refspec.gpu.SILU_Q8_THREADS, refspec.gpu.RMSNORM_Q8_THREADS = default
print("every variant's logits the same bits at each width")
if len(sys.argv) > 5:
    with open(sys.argv[5], "w") as f:
        json.dump(report, f, indent=1)
