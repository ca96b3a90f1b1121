"""Which tensor-core GEMV mapping a pass of 9-16 rows should run on a preset model's large matrices (device
machine, for tuning; a tool, not a test): the pass of R rows at position 64, replayed as its graph, with the
backend's own choice ("production") and with the rule before GEMV_MMA_TWO_STREAMS_16 ("before": where
production runs it, GEMV_MMA_TALL for more than GEMV_MMA_STREAM_WAVES waves of tall tiles, else GEMV_MMA);
"tall" runs GEMV_MMA_TALL wherever production runs GEMV_MMA_TWO_STREAMS_16, and "mid_resident" runs
GEMV_MMA_RESIDENT (blocks of one stream, one a multiprocessor at 16 rows) where production runs
GEMV_MMA_TWO_STREAMS_16 on one to two waves of tall tiles. The variants run in turn, ROUNDS times (a pass's
time drifts by a few percent over a run):

    python3 tests/profile_mma_choice.py PRESET|MODEL.gguf [ROWS,...] [REPEATS] [ROUNDS]

Prints each time as it comes, then JSON: {variant: {rows: [ms, ...]}} and which mapping each matrix took.
"""
from __future__ import annotations

import json
import sys
import time

from refspec.bench_decode import preset_model_path
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import GpuBackend
from refspec.gpu_mappings import (GEMV_MMA, GEMV_MMA_RESIDENT, GEMV_MMA_STREAM_WAVES, GEMV_MMA_TALL,
                                  GEMV_MMA_TWO_STREAMS_16)

from graph_timing import fresh_pass_seconds

preset = sys.argv[1]
widths = [int(w) for w in sys.argv[2].split(",")] if len(sys.argv) > 2 else [8, 12, 16]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 40
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
POSITION = 64
model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)
be = GpuBackend()
tf = Transformer(model, be)
production = be.gemv_config
chosen: dict = {}


def streams_in_waves(rows, k, n) -> bool:
    """Whether the tall tiles of an n x k matrix at `rows` rows are more than GEMV_MMA_STREAM_WAVES waves."""
    _, _, wave, _ = be._mma_capacity(be._gemv_function(GEMV_MMA_TALL, rows), GEMV_MMA_TALL, rows, k)
    return be._blocks(n, GEMV_MMA_TALL.weight_rows_per_block()) > GEMV_MMA_STREAM_WAVES * wave


def before(rows, k, n):
    config = production(rows, k, n)
    if config != GEMV_MMA_TWO_STREAMS_16:
        return config
    return GEMV_MMA_TALL if streams_in_waves(rows, k, n) else GEMV_MMA


def tall(rows, k, n):
    config = production(rows, k, n)
    return GEMV_MMA_TALL if config == GEMV_MMA_TWO_STREAMS_16 else config


def mid_resident(rows, k, n):
    config = production(rows, k, n)
    if config == GEMV_MMA_TWO_STREAMS_16 and not streams_in_waves(rows, k, n) \
            and be.gemv_fits(GEMV_MMA_RESIDENT, rows, k):
        return GEMV_MMA_RESIDENT
    return config


VARIANTS = {"production": production, "before": before, "tall": tall, "mid_resident": mid_resident}


def pass_ms(choose, rows: int, label: str) -> float:
    def recorded(r, k, n):
        config = choose(r, k, n)
        chosen.setdefault(label, {})[f"{r} rows {n}x{k}"] = config.name(r)
        return config

    be.gemv_config = recorded
    try:
        return 1e3 * fresh_pass_seconds(tf, rows, POSITION, repeats)
    finally:
        be.gemv_config = production


report = {"preset": preset, "position": POSITION, "repeats": repeats,
          "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "ms": {}}
for _ in range(rounds):
    for rows in widths:
        for label, choose in VARIANTS.items():
            ms = round(pass_ms(choose, rows, label), 4)
            report["ms"].setdefault(label, {}).setdefault(str(rows), []).append(ms)
            print(rows, label, ms, flush=True)
report["chosen"] = chosen
print(json.dumps(report, indent=1))
