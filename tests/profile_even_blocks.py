"""The forward pass with and without even blocks a multiprocessor for one-row GEMVs of long rows
(GemvConfig.even, GEMV_EVEN_MIN_K; device machine, a tool, not a test): the pass of R rows of a preset model or a
GGUF file at position 64, replayed as its graph, each way in turn, ROUNDS times (a pass's time drifts by a few
percent over a run). The same bits either way (tests/test_gpu_fused.py).

    python3 tests/profile_even_blocks.py PRESET|MODEL.gguf ROWS,... REPEATS ROUNDS

Prints each time as it comes, then JSON: {"even"|"hardware": {rows: [ms, ...]}} and which matrices took `even`.
"""
from __future__ import annotations

import json
import sys
import time

from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend

from graph_timing import fresh_pass_seconds

POSITION = 64

preset, widths = sys.argv[1], [int(w) for w in sys.argv[2].split(",")]
repeats, rounds = int(sys.argv[3]), int(sys.argv[4])
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
production = be.gemv_config
evened: set[str] = set()


def watch(rows, k, n):
    config = production(rows, k, n)
    if config.even:
        evened.add(f"{rows} rows {n}x{k}")
    return config


be.gemv_config = watch
report = {"preset": preset, "position": POSITION, "repeats": repeats,
          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "ms": {}}
for _ in range(rounds):
    for rows in widths:
        for label, on in (("even", True), ("hardware", False)):
            be.even_blocks = on
            ms = round(1e3 * fresh_pass_seconds(tf, rows, POSITION, repeats), 4)
            report["ms"].setdefault(label, {}).setdefault(str(rows), []).append(ms)
            print(rows, label, ms, flush=True)
report["even_matrices"] = sorted(evened)
print(json.dumps(report, indent=1))
