"""What a pass costs with some matrices' GEMV mapping swapped (device machine, for tuning; a tool, not a test):
the pass of R rows of a preset model or a GGUF file at position 64 (or $POSITION), replayed as its graph, with the backend's
own choice ("production") and with each variant, in turn, ROUNDS times (a pass's time drifts by a few percent
over a run). A variant is LABEL=SWAP[+SWAP...], a swap NxK:NR,MT,STAGES[,res[,GROUPS]] (a tensor-core
mapping, GemvConfig("q8_gemv_mma", NR, MT, STAGES, resident, GROUPS)) for that matrix at every width timed, or
attn:KERNEL,PER[,THREADS] (attention's plan, AttnPlan(KERNEL, PER), for every width above one row, with
THREADS threads a block where given (both thread rules: tests/graph_timing.force_attention_threads), else the
backend's own):

    python3 tests/profile_pass_swaps.py PRESET|MODEL.gguf ROWS,... REPEATS ROUNDS VARIANT...

e.g. `llama-8b 4,8 40 3 qkv4=6144x4096:4,1,3 o2=4096x4096:8,1,2`. Prints each time as it comes, then JSON:
{variant: {rows: [ms, ...]}} and which mapping each matrix took.
"""
from __future__ import annotations

import json
import os
import sys
import time

from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend
from refspec.gpu_mappings import AttnPlan, GemvConfig

from graph_timing import force_attention_threads, fresh_pass_seconds

POSITION = int(os.environ.get("POSITION", "64"))  # the passes' position (POSITION=4000: a long context)


def parse_swap(text: str) -> tuple[tuple[int, int] | str, GemvConfig | tuple[AttnPlan, int | None]]:
    shape, mapping = text.split(":")
    if shape == "attn":
        kernel, per, *threads = mapping.split(",")
        return "attn", (AttnPlan(kernel, int(per)), int(threads[0]) if threads else None)
    n, k = (int(v) for v in shape.split("x"))
    parts = mapping.split(",")
    nr, mt, stages = (int(v) for v in parts[:3])
    resident = len(parts) > 3 and parts[3] == "res"
    groups = int(parts[4]) if len(parts) > 4 else 1
    return (n, k), GemvConfig("q8_gemv_mma", nr, mt, stages, resident=resident, groups=groups)


preset, widths = sys.argv[1], [int(w) for w in sys.argv[2].split(",")]
repeats, rounds = int(sys.argv[3]), int(sys.argv[4])
swaps = {"production": {}}
for arg in sys.argv[5:]:
    label, spec = arg.split("=", 1)
    swaps[label] = dict(parse_swap(s) for s in spec.split("+"))
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
production = be.gemv_config
plan = be.attention_plan
chosen: dict = {}
for table in swaps.values():  # compiled before any capture
    for key, config in table.items():
        for rows in widths if key != "attn" else ():
            be._gemv_function(config, rows)


def pass_ms(label: str, rows: int) -> float:
    table = swaps[label]

    def choose(r, k, n):
        config = (table.get((n, k)) if r in widths else None) or production(r, k, n)  # (not the prefill's 16 rows)
        chosen.setdefault(label, {})[f"{r} rows {n}x{k}"] = config.name(r)
        return config

    def attention_plan(rows, heads, kv_heads, cache_len):
        forced = rows > 1 and "attn" in table
        force_attention_threads(be, table["attn"][1] if forced else None)
        return table["attn"][0] if forced else plan(rows, heads, kv_heads, cache_len)

    be.gemv_config, be.attention_plan = choose, attention_plan
    try:
        return 1e3 * fresh_pass_seconds(tf, rows, POSITION, repeats)
    finally:
        be.gemv_config, be.attention_plan = production, plan
        force_attention_threads(be, None)


report = {"preset": preset, "position": POSITION, "repeats": repeats, "swaps": sys.argv[5:],
          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "ms": {}}
for _ in range(rounds):
    for rows in widths:
        for label in swaps:
            ms = round(pass_ms(label, rows), 4)
            report["ms"].setdefault(label, {}).setdefault(str(rows), []).append(ms)
            print(rows, label, ms, flush=True)
report["chosen"] = chosen
print(json.dumps(report, indent=1))
