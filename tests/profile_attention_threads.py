"""attention_values' threads a block where it runs in units of rows (device machine, for tuning; a tool, not a test):
attention_q8 as the backend plans it and with each thread count of ATTN_THREAD_CHOICES forced, in a chain of 32
launches captured as one graph (tests/graph_timing.py; every launch reads the same cache, so the L2 cache holds
much of it: whole passes, tests/ab_pass_sources.sh, are the judge), for caches of 256 * CHUNKS positions with the
rows at the cache's last 64 positions, at llama-8b's and qwen2.5-32b's layer shapes. One JSON line a case:

    python3 tests/profile_attention_threads.py OUT.jsonl [ROWS,...] [CHUNKS,...]
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.gpu import GpuBackend
from refspec.gpu_mappings import ATTN_THREAD_CHOICES

from graph_timing import attention_chain_us, attention_operands, force_attention_threads

out = open(sys.argv[1], "w")
row_counts = [int(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [4, 8, 16]
chunk_counts = [int(c) for c in sys.argv[3].split(",")] if len(sys.argv) > 3 else [3, 4, 5, 8, 9, 12, 16]
be = GpuBackend()
cp = be.cp
rng = np.random.default_rng(0)
for shape in ("32x8x128", "40x8x128"):
    heads, kv_heads, dim = (int(v) for v in shape.split("x"))
    for rows in row_counts:
        for chunks in chunk_counts:
            cache = 256 * chunks
            pos0 = cache - 64
            if be.attention_plan(rows, heads, kv_heads, cache).kernel != "spread":
                continue
            q, kc, vc, pos = attention_operands(cp, rng, rows, heads, kv_heads, dim, cache, pos0)
            row = {"shape": shape, "rows": rows, "chunks": chunks, "pos0": pos0,
                   "plan_us": attention_chain_us(be, q, kc, vc, pos, 10)}
            for threads in ATTN_THREAD_CHOICES:
                force_attention_threads(be, threads)
                row[f"t{threads}"] = attention_chain_us(be, q, kc, vc, pos, 10)
            force_attention_threads(be, None)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)
