"""The attention kernel's time in a pass (device machine, for tuning): attention_q8 at a llama-8b layer's shape
(32 query heads, 8 kv heads, head size 128), 32 launches in a chain captured as one graph (what 32 layers
cost), at several row counts and positions, by each plan (one kernel a block per (row, head); one kernel a block
per (row, kv head) with 2 or 4 of its query heads; two kernels spread over positions with one query head a block
or four) with each thread count of ATTN_THREAD_CHOICES ("plan": what GpuBackend.attention_plan chooses).

    python3 tests/profile_attention.py [REPEATS] [POSITIONS,...] [ROWS,...] [HEADSxKV_HEADSxDIM]

(the last: another layer's shape, e.g. 40x8x128 for qwen2.5-32b or 24x4x256 for qwen3.5-27b's gated attention)
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.gpu import GpuBackend
from refspec.gpu_mappings import ATTN_THREAD_CHOICES, AttnPlan

from graph_timing import attention_chain_us, attention_operands, force_attention_threads

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 30
be = GpuBackend()
cp = be.cp
heads, kv_heads, dim = (int(v) for v in sys.argv[4].split("x")) if len(sys.argv) > 4 else (32, 8, 128)


def chain_us(q, kc, vc, pos) -> float:
    return attention_chain_us(be, q, kc, vc, pos, repeats)


report = []
rng = np.random.default_rng(0)
positions = [int(p) for p in sys.argv[2].split(",")] if len(sys.argv) > 2 else [64, 160, 1000, 4000]
row_counts = [int(r) for r in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1, 4, 8, 12, 16]
plans = {"one": AttnPlan("attention"), "heads2": AttnPlan("attention_heads", 2),
         "heads4": AttnPlan("attention_heads", 4), "split1": AttnPlan("spread", 1), "split4": AttnPlan("spread", 4)}
for pos0 in positions:
    for rows in row_counts:
        cache = pos0 + rows + 100
        q, kc, vc, pos = attention_operands(cp, rng, rows, heads, kv_heads, dim, cache, pos0)
        plan = be.attention_plan(rows, heads, kv_heads, cache)
        row = {"shape": f"{heads}x{kv_heads}x{dim}", "pos0": pos0, "rows": rows, "plan": f"{plan.kernel} {plan.per}",
               "us_plan": chain_us(q, kc, vc, pos)}  # as the backend plans it (plan and threads)
        for label, plan in plans.items():
            be.attention_plan = lambda *args, p=plan: p
            for threads in ATTN_THREAD_CHOICES:
                force_attention_threads(be, threads)
                row[f"us_{label}_{threads}"] = chain_us(q, kc, vc, pos)
        force_attention_threads(be, None)
        del be.attention_plan
        report.append(row)
        print(json.dumps(row), flush=True)
