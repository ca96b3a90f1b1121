"""Attention at a llama-8b layer's shape (32 query heads, 8 kv heads, head size 128) at position POS, a few
launches at each row count, eagerly, for ncu on the device machine (a tool, not a test):

    ncu --set full -k regex:attention --launch-skip-before-match 0 python3 tests/profile_attention_once.py ROWS,... [POS]

Each row count's third launch is the one to read (the first two warm up). LINEINFO=1 compiles with -lineinfo."""
from __future__ import annotations

import os
import sys

import numpy as np

from refspec import gpu
from refspec.gpu import GpuBackend

from graph_timing import attention_operands

if os.environ.get("LINEINFO"):  # source lines in ncu's report (another cache key: these compile afresh)
    gpu.COMPILE_OPTIONS["cuda"] += ("-lineinfo",)

be = GpuBackend()
cp = be.cp
heads, kv_heads, dim = 32, 8, 128
pos0 = int(sys.argv[2]) if len(sys.argv) > 2 else 64
rng = np.random.default_rng(0)
for rows in (int(r) for r in sys.argv[1].split(",")):
    cache = pos0 + rows + 100
    q, kc, vc, pos = attention_operands(cp, rng, rows, heads, kv_heads, dim, cache, pos0)
    print(rows, be.attention_plan(rows, heads, kv_heads, cache), flush=True)
    for _ in range(3):
        be.attention_q8(q, kc, vc, pos)
    cp.cuda.runtime.deviceSynchronize()
