"""Where a decode pass's time goes, on the GPU (device machine, for tuning): the one-row pass of a preset
model, replayed as its graph, beside a graph of only its GEMVs (every layer's stacked QKV, output, stacked
gate/up and down matrices, then the LM head, on the same weights), each with overlapped and plain launches.
The difference is what the small kernels between the GEMVs cost.

    python3 tests/profile_chain.py PRESET [REPEATS]
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GEMV_CONFIGS, GpuBackend

preset = sys.argv[1]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 50
model = load(preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
cp = be.cp
tf = Transformer(model, be)


def gemv_matrices():
    out = []
    for lw in tf.weights.layers:
        for w in (lw.wq, lw.wo, lw.w_gate, lw.w_down):
            out.append(w.stack if w.stack is not None else w)
    out.append(tf.weights.output)
    return out


def graph_time(launch_all) -> float:
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        launch_all()  # load and warm up
        stream.begin_capture()
        launch_all()
        graph = stream.end_capture()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            graph.launch(stream)
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return statistics.median(times)


def pass_time(c) -> float:
    """Seconds per one-row pass (graph replays) queued back to back, the host never waiting."""
    for _ in range(3):
        tf.forward(c, [5], 64)
    be.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        tf.forward(c, [5], 64)
    be.synchronize()
    return (time.perf_counter() - t0) / repeats


mats = gemv_matrices()
inputs = {}
for w in mats:
    n, k = w.shape
    if k not in inputs:
        inputs[k] = (cp.asarray(np.random.default_rng(k).integers(-127, 128, (1, k), dtype=np.int8)),
                     cp.full((1, k // 32), 0x2000, dtype=cp.uint16))
outs = [cp.empty((1, w.shape[0]), cp.float32) for w in mats]


def gemvs():
    for w, y in zip(mats, outs):
        xq, xd = inputs[w.shape[1]]
        be.launch_gemv(GEMV_CONFIGS[1], w, xq, xd, y)


weight_bytes = sum(w.q.nbytes + w.d.nbytes for w in mats)
cache = tf.new_cache(128)
tf.forward(cache, [1] * 64, 0)
report = {"preset": preset, "weight_bytes_of_gemvs": weight_bytes, "gemvs": len(mats)}
for overlap in (True, False):
    be.overlap = overlap
    t = graph_time(gemvs)
    report[f"gemv_chain_ms_overlap_{overlap}"] = round(t * 1e3, 4)
    report[f"gemv_chain_gb_per_s_overlap_{overlap}"] = round(weight_bytes / t / 1e9, 1)
    c = tf.new_cache(128)  # its graphs are recorded with this launch mode
    tf.forward(c, [1] * 64, 0)
    report[f"pass_ms_overlap_{overlap}"] = round(pass_time(c) * 1e3, 4)
print(json.dumps(report, indent=1))
