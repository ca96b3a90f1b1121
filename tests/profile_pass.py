"""Kernel times of one forward pass on the GPU, for tuning (run under ncu on the device machine):

    ncu --clock-control none --metrics gpu__time_duration.sum --csv python3 tests/profile_pass.py MODEL ROWS [POS]

MODEL is a preset name (a 2-layer synthetic model of the preset's width is written) or `default` (the
default model, every layer). Eager passes of ROWS rows at position POS (default 64; the prompt before it is
run in chunks of 64), two of them to warm up, then the profiled one: tests/profile_pass.sh keeps the kernels
after the last embed launch."""
from __future__ import annotations

import sys
import tempfile

from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend
from refspec.synthetic import PRESETS, write_model

name, rows = sys.argv[1], int(sys.argv[2])
pos = int(sys.argv[3]) if len(sys.argv) > 3 else 64
if name == "default":
    from refspec.default_model import default_model_path

    model = load(default_model_path(), log=lambda m: None)
else:
    with tempfile.TemporaryDirectory() as tmp:
        model = load(write_model(f"{tmp}/m.gguf", **dict(PRESETS[name], n_layer=2)), log=lambda m: None)
tf = Transformer(model, GpuBackend(), graphs=False)
cache = tf.new_cache(pos + rows)
for start in range(0, pos, 64):
    tf.forward(cache, [1] * min(64, pos - start), start)
for _ in range(2):
    tf.forward(cache, list(range(rows)), pos)
tf.be.synchronize()
print("PROFILED-PASS-BEGINS", flush=True)
tf.forward(cache, list(range(rows)), pos)
tf.be.synchronize()
