"""Attention chains as planned (device machine, for an A/B of kernels_raw/attention.hip; a tool, not a test): 32
attention_q8 launches at llama-8b's layer shape captured as one graph, us a launch, at 1 / 8 / 16 rows over 1000
and 4000 positions; with "passes", then llama-8b passes of 8 and 16 rows at position 4000. One JSON line each.

    python3 tests/ab_chains.py LABEL [passes]
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.gpu import GpuBackend

from graph_timing import attention_chain_us, fresh_pass_seconds

label = sys.argv[1]
be = GpuBackend()
cp = be.cp
rng = np.random.default_rng(0)
for pos0 in (1000, 4000):
    for rows in (1, 8, 16):
        cache = pos0 + rows + 100
        q = cp.asarray(rng.standard_normal((rows, 32, 128)).astype(np.float32))
        kc, vc = (cp.asarray(rng.standard_normal((8, cache, 128)).astype(np.float32)) for _ in range(2))
        pos = cp.asarray(np.array([pos0], np.int32))
        us = attention_chain_us(be, q, kc, vc, pos, 10)
        print(json.dumps({"label": label, "pos": pos0, "rows": rows, "us": us}), flush=True)
if sys.argv[2:] == ["passes"]:
    from refspec.bench_decode import preset_model_path
    from refspec.forward import Transformer
    from refspec.gguf_model import load
    tf = Transformer(load(preset_model_path("llama-8b", print), log=lambda m: None), be)
    for rows in (8, 16):
        ms = round(1e3 * fresh_pass_seconds(tf, rows, 4000, 20), 4)
        print(json.dumps({"label": label, "pass_pos": 4000, "rows": rows, "ms": ms}), flush=True)
