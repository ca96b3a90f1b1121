"""Attention plans in whole passes (device machine, for tuning): forward passes of a preset model (or a GGUF
file) of R rows at a few positions, replayed as graphs, with GpuBackend.attention_plan as on main and with
rules that give a block per (row, kv head) from fewer or more (row, head) pairs. Every plan gives the same
bits; this times them where they sit in a pass (tests/profile_attention.py times the kernel alone).

    python3 tests/profile_attention_plans.py PRESET|MODEL.gguf [ROWS,...] [POSITIONS,...] [REPEATS] [JSON]

RULES (environment, e.g. RULES=main,per_head_short) picks some of the rules below. A rule named NAME@T runs rule
NAME with attention_heads' blocks capped at T threads (e.g. main@256: 8 warps a block, so that a block of the next
GEMV fits beside it on a multiprocessor while the attention runs).
"""
from __future__ import annotations

import json
import os
import sys

from refspec.bench_decode import preset_model_path, time_pass
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec import gpu
from refspec.gpu import GpuBackend
from refspec.gpu_mappings import ATTN_HEADS, ATTN_HEADS_PER, ATTN_SPLIT_CACHE, AttnPlan

preset = sys.argv[1]
widths = [int(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 8, 12, 16]
positions = [int(p) for p in sys.argv[3].split(",")] if len(sys.argv) > 3 else [64, 300]
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 30
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
planned = GpuBackend.attention_plan
ONE_HEAD_CACHE = 2048  # the rules before 2026-12-04: up to this, a spread attention of few rows took one head a block


def per_head_rule(self, rows, heads, kv_heads, cache_len):
    """The plan before attention_heads: a block per (row, head) while they fit twice, else spread."""
    pairs = rows * heads
    if cache_len <= ATTN_SPLIT_CACHE and pairs < 2 * self._multiprocessors:
        return AttnPlan("attention")
    if 2 * pairs <= self._multiprocessors and cache_len <= ONE_HEAD_CACHE:
        return AttnPlan("spread", 1)
    return AttnPlan("spread", ATTN_HEADS)


def one_head_spread(self, rows, heads, kv_heads, cache_len):
    """main's, but a spread attention of few (row, head) pairs over up to ONE_HEAD_CACHE positions takes one
    query head a block (the rule before 2026-12-04)."""
    if ATTN_SPLIT_CACHE < cache_len <= ONE_HEAD_CACHE and 2 * rows * heads <= self._multiprocessors:
        return AttnPlan("spread", 1)
    return planned(self, rows, heads, kv_heads, cache_len)


def heads_from_twice(self, rows, heads, kv_heads, cache_len):
    """attention_heads only where the (row, head) blocks would not fit twice."""
    if cache_len <= ATTN_SPLIT_CACHE and rows * heads < 2 * self._multiprocessors:
        return AttnPlan("attention")
    return planned(self, rows, heads, kv_heads, cache_len)


def per_head_short(self, rows, heads, kv_heads, cache_len):
    """A block per (row, head) over every short cache, however many blocks (attention_threads gives them 128
    threads past two a multiprocessor); main's plan beyond ATTN_SPLIT_CACHE."""
    if cache_len <= ATTN_SPLIT_CACHE:
        return AttnPlan("attention")
    return planned(self, rows, heads, kv_heads, cache_len)


def fewest_blocks(self, rows, heads, kv_heads, cache_len):
    """Passes of 2 rows or more over a short cache with grouped query heads: blocks of the most query heads
    (ATTN_HEADS_PER's last), so that fewer multiprocessors run attention and more hold the output projection's
    blocks, which load their first weights while it runs (they cannot sit beside a block of attention_heads' 512
    threads); main's plan elsewhere."""
    if rows > 1 and cache_len <= ATTN_SPLIT_CACHE and heads > kv_heads:
        return AttnPlan("attention_heads", ATTN_HEADS_PER[-1])
    return planned(self, rows, heads, kv_heads, cache_len)


rules = {"per_head": per_head_rule, "main": planned, "heads_from_twice": heads_from_twice,
         "one_head_spread": one_head_spread, "per_head_short": per_head_short, "fewest_blocks": fewest_blocks}
if os.environ.get("RULES"):  # e.g. RULES=main,per_head_short,main@256
    rules = {name: rules[name.split("@")[0]] for name in os.environ["RULES"].split(",")}
heads_max_threads = gpu.attention_heads_max_threads
report = {"model": preset, "repeats": repeats, "ms": {}}
for position in positions:
    cache = tf.new_cache(position + max(widths) + 8)
    for start in range(0, position, 256):
        tf.forward(cache, [1] * min(256, position - start), start)
    for sweep in range(2):  # each rule twice, in turn
        for name, rule in rules.items():
            be.attention_plan = rule.__get__(be)
            cap = int(name.split("@")[1]) if "@" in name else None
            gpu.attention_heads_max_threads = (heads_max_threads if cap is None else
                                               lambda bound, hip, cap=cap: min(cap, heads_max_threads(bound, hip)))
            cache.graphs.clear()  # capture the passes again with this rule's plans
            for rows in widths:
                ids = [(7 * i + 3) % tf.config.n_vocab for i in range(rows)]
                ms = round(1e3 * time_pass(be, lambda: tf.forward(cache, ids, position), repeats), 3)
                report["ms"].setdefault(f"{name} pos={position} rows={rows}", []).append(ms)
                print(f"{name:17s} pos={position:5d} rows={rows:3d} {ms:.3f} ms", flush=True)
    del be.attention_plan
    gpu.attention_heads_max_threads = heads_max_threads
if len(sys.argv) > 5:
    with open(sys.argv[5], "w") as f:
        json.dump(report, f, indent=1)
