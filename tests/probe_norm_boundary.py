"""The boundary after RMSNorm+quantize at 8 rows (device machine; a tool, not a test). The timeline of 2026-12-05
(tests/results/timeline_llama8b_2026_12_05_h200.jsonl) has llama-8b's RMSNorm+quantize cost 3.9 us in place at one
row, 4.8 at 8 rows and 3.6 at 16 (release to release: the kernel and the start of the GEMV after it). At 8 rows
that GEMV (Q/K/V, gate/up) runs GEMV_MMA_TWO_STREAMS, one block of 512 threads and ~204 KiB of shared memory a
multiprocessor (4 rounds of weights in flight a warp); at 16 rows GEMV_MMA_TWO_STREAMS_16 (2 rounds, less shared
memory). The guess: a block that needs nearly all of a multiprocessor's shared memory becomes resident, and is
let go, later after the kernel before it. This times whole passes (graph replays, position 64) with the GEMVs
whose production mapping is GEMV_MMA_TWO_STREAMS given another mapping, variants in turn, and checks that each
variant's logits have production's bits:

    python3 tests/probe_norm_boundary.py PRESET ROWS,... REPEATS ROUNDS JSON_OUT

With VARIANTS=16, the GEMVs production runs as GEMV_MMA_TWO_STREAMS_16 (9-16 rows) get the others instead.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace

from refspec.gpu_mappings import (GEMV_MMA, GEMV_MMA_RESIDENT, GEMV_MMA_TALL, GEMV_MMA_TWO_STREAMS,
                                  GEMV_MMA_TWO_STREAMS_16)

from graph_timing import time_widths, variant_probe

preset, widths, repeats, rounds, out_path, be, tf = variant_probe(sys.argv)
POSITION = 64
vocab, ffn2 = tf.config.n_vocab, 2 * tf.config.n_ff
production = be._choose_mma_config


def variant(config, which=lambda n: True, instead_of=GEMV_MMA_TWO_STREAMS):
    """GEMVs production runs as `instead_of` over matrices of n rows that `which` takes run `config`."""
    def choose(rows, n, k):
        chosen = production(rows, n, k)
        return config if chosen == instead_of and which(n) and be.gemv_fits(config, rows, k) else chosen
    return choose


SIXTEEN = {  # the 16-row mapping of Q/K/V, gate/up and the head (GEMV_MMA_TWO_STREAMS_16), with VARIANTS=16
    "main": production,
    "two_streams_16_3_rounds": variant(replace(GEMV_MMA_TWO_STREAMS_16, occ=3), instead_of=GEMV_MMA_TWO_STREAMS_16),
    "tall": variant(GEMV_MMA_TALL, instead_of=GEMV_MMA_TWO_STREAMS_16),
    "mma": variant(GEMV_MMA, instead_of=GEMV_MMA_TWO_STREAMS_16),
    "qkv_tall": variant(GEMV_MMA_TALL, lambda n: n not in (vocab, ffn2), instead_of=GEMV_MMA_TWO_STREAMS_16),
    "qkv_mma": variant(GEMV_MMA, lambda n: n not in (vocab, ffn2), instead_of=GEMV_MMA_TWO_STREAMS_16),
}
VARIANTS = SIXTEEN if os.environ.get("VARIANTS") == "16" else {
    "main": production,
    "two_streams_3_rounds": variant(replace(GEMV_MMA_TWO_STREAMS, occ=3)),
    "two_streams_2_rounds": variant(replace(GEMV_MMA_TWO_STREAMS, occ=2)),
    "resident": variant(GEMV_MMA_RESIDENT),
    "qkv_3_rounds": variant(replace(GEMV_MMA_TWO_STREAMS, occ=3), lambda n: n not in (vocab, ffn2)),
    "gate_up_3_rounds": variant(replace(GEMV_MMA_TWO_STREAMS, occ=3), lambda n: n == ffn2),
}
report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "preset": preset, "position": POSITION,
          "repeats": repeats, "gpu": be.cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "runs": []}
digests = {}
for r in range(rounds):
    for name, choose in VARIANTS.items():
        be._choose_mma_config = choose
        be._mma_configs.clear()
        cache = tf.new_cache(POSITION + max(widths) + 8)
        cache.graphs.clear()
        tf.forward(cache, [1] * POSITION, 0)
        run = {"variant": name, "round": r, "ms": {}, "configs": {}}
        time_widths(tf, cache, widths, POSITION, repeats, digests, run)
        for rows in widths:
            run["configs"][rows] = sorted({f"{n}x{k}: {c.name(rw)}" for (rw, n, k, _), c in be._mma_configs.items()
                                           if rw == rows})
        report["runs"].append(run)
        print(f"round {r} {name:22s} " + "  ".join(f"{rows} rows {ms:.4f} ms" for rows, ms in run["ms"].items())
              + ("" if all(v for key, v in run.items() if key.startswith("same_bits")) else "  BITS DIFFER"), flush=True)
print(json.dumps({run["variant"]: run["configs"] for run in report["runs"] if run["round"] == 0}, indent=1))
with open(out_path, "w") as f:
    json.dump(report, f, indent=1)
sys.exit(0 if all(v for run in report["runs"] for key, v in run.items() if key.startswith("same_bits")) else 1)
