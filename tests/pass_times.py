"""Seconds a forward pass takes, replayed as its graph, for a few widths, and a digest of each width's logits
(device machine, for tests/ab_pass_sources.sh): one line of JSON appended to JSON_OUT per run.

    python3 tests/pass_times.py PRESET|MODEL.gguf ROWS,... REPEATS LABEL JSON_OUT

The pass is at position $POSITION (default 64) of a cache whose first positions a prompt pass wrote; its token ids
are fixed, so the same kernels' arithmetic gives the same digests in any process.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend

from graph_timing import pass_seconds

preset, widths, repeats, label, path = sys.argv[1], [int(r) for r in sys.argv[2].split(",")], int(sys.argv[3]), \
    sys.argv[4], sys.argv[5]
position = int(os.environ.get("POSITION", "64"))
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
cache = tf.new_cache(position + max(widths) + 8)
tf.forward(cache, [1] * position, 0)
run = {"label": label, "preset": preset, "position": position, "repeats": repeats, "ms": {}, "logits_sha256": {}}
for rows in widths:
    ids = [(7 * i + 3) % tf.config.n_vocab for i in range(rows)]
    run["ms"][rows] = round(1e3 * pass_seconds(tf, cache, ids, position, repeats), 4)
    logits = be.to_host(tf.forward(cache, ids, position))
    run["logits_sha256"][rows] = hashlib.sha256(np.ascontiguousarray(logits).view(np.uint8)).hexdigest()
    print(f"{label:12s} rows={rows:3d} {run['ms'][rows]:.4f} ms", flush=True)
with open(path, "a") as f:
    f.write(json.dumps(run) + "\n")
