"""What each small kernel of a decode pass costs where it sits (device machine, for tuning): the pass of a
preset model or a GGUF file (R rows at a position) replayed as its graph, beside the same pass with one kind of small
kernel left out (its output buffers are reused as they are: the numbers are garbage, the GEMVs' timing is
not). The difference is what fusing that kernel away could save at most. Then the RMSNorm's kernel swapped
for others, as probes.

    python3 tests/profile_ablate.py PRESET|MODEL.gguf [ROWS,...] [REPEATS] [LABELS,...] [POSITION]

ROWS: R (a pass of R rows) or R@C (a pass of R rows computing only its first C: GpuBackend.live_rows).

LABELS picks some of the variants below (default: all); POSITION is where the timed passes start (default 64:
the passes see that many earlier positions).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

import refspec.gpu
from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend

from graph_timing import pass_seconds

preset = sys.argv[1]
widths = sys.argv[2].split(",") if len(sys.argv) > 2 else ["1", "8", "16"]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 50
position = int(sys.argv[5]) if len(sys.argv) > 5 else 64
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
real = {name: getattr(be, name) for name in ("rmsnorm_q8", "attention_q8", "rope_kv", "silu_mul_q8")}
kept: dict = {}


def once(name):
    """The op `name`, run for real the first time per call site shape, then its first outputs again."""
    def op(*args):
        key = (name,) + tuple(getattr(a, "shape", None) for a in args[:2])
        if key not in kept:
            kept[key] = real[name](*args)
        return kept[key]
    return op


def pass_time(rows: int, live: int | None = None) -> float:
    """Seconds a pass of `rows` rows (computing the first `live`, if given) takes, replayed as its graph."""
    c = tf.new_cache(position + 64)
    c.graphs.clear()  # the storage comes back with the passes captured for it: capture them again
    tf.forward(c, [1] * position, 0)
    if live is not None:
        be.live_rows(be.cp.asarray(np.array([live], np.int32)))
    try:
        return pass_seconds(tf, c, [5] * rows, position, repeats)
    finally:
        be.live_rows(None)


def rmsnorm_q8_unstaged(x, w, eps):
    """rmsnorm_q8 as the kernel for rows too long to stage in shared memory runs it (same bits)."""
    saved, refspec.gpu.RMSNORM_Q8_SHARED_BYTES = refspec.gpu.RMSNORM_Q8_SHARED_BYTES, 0
    try:
        return real["rmsnorm_q8"](x, w, eps)
    finally:
        refspec.gpu.RMSNORM_Q8_SHARED_BYTES = saved


variants = {"all": [], "no_rmsnorm_q8": ["rmsnorm_q8"], "no_attention_q8": ["attention_q8"],
            "no_rope_kv": ["rope_kv"], "no_silu_mul_q8": ["silu_mul_q8"], "gemvs_only": list(real)}
# the RMSNorm's kernel replaced: by its unstaged twin (no dynamic shared memory), by a plain quantization of
# x (no norm: the same small kernel without the row's serial sum; wrong numbers, a timing probe)
replaced = {"rmsnorm_q8_unstaged": rmsnorm_q8_unstaged,
            "quantize_instead_of_rmsnorm_q8": lambda x, w, eps: be.quantize_q8(x)}
report = {"preset": preset, "position": position, "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
labels = sys.argv[4].split(",") if len(sys.argv) > 4 else list(variants) + list(replaced)
for label in labels:  # the widths of one variant side by side (a process's pass times drift by a few percent)
    for width in widths:
        rows, _, live = width.partition("@")
        left_out = variants.get(label, [])
        for name, fn in real.items():
            setattr(be, name, once(name) if name in left_out else fn)
        if label in replaced:
            be.rmsnorm_q8 = replaced[label]
        kept.clear()
        report[f"r{width}_{label}_ms"] = round(pass_time(int(rows), int(live) if live else None) * 1e3, 4)
        print(width, label, report[f"r{width}_{label}_ms"], flush=True)
print(json.dumps(report, indent=1))
