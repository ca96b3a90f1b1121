"""Where a decode pass's time goes, on the GPU (device machine, for tuning): the one-row pass of a preset
model, replayed as its graph, beside a graph of only its GEMVs (every layer's stacked QKV, output, stacked
gate/up and down matrices, then the LM head, on the same weights), each with overlapped and plain launches.
The difference is what the small kernels between the GEMVs cost.

    python3 tests/profile_chain.py PRESET [REPEATS]
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend
from refspec.gpu_mappings import GEMV_CONFIGS

from graph_timing import graph_seconds, pass_seconds

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
    return graph_seconds(cp, launch_all, repeats)


def pass_time(c) -> float:
    """Seconds per one-row pass at position 64."""
    return pass_seconds(tf, c, [5], 64, repeats)


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

# each small kernel of a llama layer, 32 in a chain (the latency of one in a pass), overlapped launches
be.overlap = True
cfg, lw = tf.config, tf.weights.layers[0]
c = tf.new_cache(128)
tf.forward(c, [1] * 64, 0)
_, pos = be.pass_input([5], 64)
x = cp.asarray(np.random.default_rng(1).standard_normal((1, cfg.n_embd)).astype(np.float32))
hq, hd = be.rmsnorm_q8(x, lw.attn_norm, cfg.rms_eps)
q, k, v = be.q8_gemv_many((lw.wq, lw.wk, lw.wv), hq, hd)
q, k, v = (t.reshape(1, -1, cfg.head_dim) for t in (q, k, v))
gq, gd = be.rmsnorm_q8(x, lw.ffn_norm, cfg.rms_eps)
gate, up = be.q8_gemv_many((lw.w_gate, lw.w_up), gq, gd)
rq = be.rope_kv(q, k, v, c.k[0], c.v[0], pos, c.rope_cos, c.rope_sin, cfg.rope_neox)
small = {
    "rmsnorm_q8": lambda: be.rmsnorm_q8(x, lw.attn_norm, cfg.rms_eps),
    "rope_kv": lambda: be.rope_kv(q, k, v, c.k[0], c.v[0], pos, c.rope_cos, c.rope_sin, cfg.rope_neox),
    "attention_q8": lambda: be.attention_q8(rq, c.k[0], c.v[0], pos),
    "silu_mul_q8": lambda: be.silu_mul_q8(gate, up),
}
for name, op in small.items():
    def chain(op=op):
        for _ in range(32):
            op()
    report[f"{name}_us_in_chain"] = round(graph_time(chain) / 32 * 1e6, 2)
print(json.dumps(report, indent=1))
