"""The attention kernel's time in a pass (device machine, for tuning): attention_q8 at a llama-8b layer's shape
(32 query heads, 8 kv heads, head size 128), 32 launches in a chain captured as one graph (what 32 layers
cost), at several row counts and positions, as one kernel and as two spread over positions, with each thread
count of ATTN_THREAD_CHOICES, the split with one query head a block and with four ("plan" and "picked": what
GpuBackend.attention_plan and attention_threads choose).

    python3 tests/profile_attention.py [REPEATS]
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.gpu import ATTN_THREAD_CHOICES, GpuBackend

from graph_timing import graph_seconds

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 30
be = GpuBackend()
cp = be.cp
heads, kv_heads, dim = 32, 8, 128
pick = be.attention_threads


def chain_us(q, kc, vc, pos) -> float:
    def chain():
        for _ in range(32):
            be.attention_q8(q, kc, vc, pos)
    return round(graph_seconds(cp, chain, repeats) * 1e6 / 32, 2)


report = []
rng = np.random.default_rng(0)
for pos0 in (64, 160, 1000, 4000):
    for rows in (1, 4, 8, 12, 16):
        cache = pos0 + rows + 100
        q = cp.asarray(rng.standard_normal((rows, heads, dim)).astype(np.float32))
        kc = cp.asarray(rng.standard_normal((kv_heads, cache, dim)).astype(np.float32))
        vc = cp.asarray(rng.standard_normal((kv_heads, cache, dim)).astype(np.float32))
        pos = cp.asarray(np.array([pos0], np.int32))
        row = {"pos0": pos0, "rows": rows, "picked": pick(rows * heads),
               "plan": be.attention_plan(rows * heads, cache)}
        for plan in (0, 1, 4):
            be.attention_plan = lambda pairs, cache_len, p=plan: p
            for threads in ATTN_THREAD_CHOICES:
                be.attention_threads = lambda blocks, t=threads: t
                row[f"us_{('one', 'split1', '', '', 'split4')[plan]}_{threads}"] = chain_us(q, kc, vc, pos)
        del be.attention_threads, be.attention_plan
        report.append(row)
        print(json.dumps(row), flush=True)
