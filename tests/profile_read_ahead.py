"""Greedy decoding and forward passes of 1, 8 and 16 rows with the GEMVs reading ahead by each of several sizes
(GpuBackend.read_ahead; device machine, for tuning; a tool, not a test). One model, one process; each setting
re-captures its graphs, and the settings run in the order given (repeat one to see the drift):

    python3 tests/profile_read_ahead.py PRESET-OR-GGUF [MB,MB,...] [REPEATS]

Prints JSON: per setting, greedy tokens/s (median of REPEATS) and the pass times in ms.
"""
from __future__ import annotations

import json
import os
import sys

from refspec.bench_decode import GREEDY_NEW_TOKENS, bench_device, bench_greedy, preset_model_path
from refspec.cli import load_model, load_tokenizer
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gpu import GpuBackend

name = sys.argv[1]
sizes = [float(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "0,16,0,16").split(",")]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
path = name if os.path.isfile(name) else preset_model_path(name, lambda m: print(m, file=sys.stderr))
model = load_model(path)
tok = load_tokenizer(model)
be = GpuBackend()
tf = Transformer(model, be)
generate(tf, tok.encode("Hello")[:4], 2, eog_ids=())  # the GEMV order is learnt here
results = []
for mb in sizes:
    be.read_ahead = int(mb * 2**20)
    tf._cache_pool.clear()  # new graphs, captured with this setting
    greedy = bench_greedy(tf, tok, repeats, GREEDY_NEW_TOKENS)
    device = bench_device(tf, [1, 8, 16], 30)
    row = {"read_ahead_mb": mb, "greedy_tokens_per_second": greedy["tokens_per_second_median"],
           "greedy_ms_per_token": greedy["ms_per_token_median"], "pass_ms": device["pass_ms"],
           "pass_over_one_row": device["pass_over_one_row"], "read_gb_per_second": device["read_gb_per_second"],
           "roofline_tokens_per_second": device["roofline_tokens_per_second"]}
    results.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
print(json.dumps({"model": name, "results": results}, indent=1))
