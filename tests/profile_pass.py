"""Kernel times of one forward pass on the GPU, for tuning (run under ncu on the device machine):

    ncu --clock-control none --metrics gpu__time_duration.sum --csv python3 tests/profile_pass.py PRESET ROWS

writes a 2-layer synthetic model of the preset's width, runs eager passes of ROWS rows (warm-up first, then
the profiled pass between two markers: ncu's --launch-skip is not needed, the script prints the kernel
count of the warm-up)."""
from __future__ import annotations

import sys
import tempfile

from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend
from refspec.synthetic import PRESETS, write_model

preset, rows = sys.argv[1], int(sys.argv[2])
shape = dict(PRESETS[preset], n_layer=2)
with tempfile.TemporaryDirectory() as tmp:
    model = load(write_model(f"{tmp}/m.gguf", **shape), log=lambda m: None)
tf = Transformer(model, GpuBackend(), graphs=False)
cache = tf.new_cache(128)
tf.forward(cache, [1] * 64, 0)
for _ in range(2):
    tf.forward(cache, list(range(rows)), 64)
tf.be.synchronize()
print("PROFILED-PASS-BEGINS", flush=True)
tf.forward(cache, list(range(rows)), 64)
tf.be.synchronize()
