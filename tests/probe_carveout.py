"""The shared-memory carveout of the small kernels (device machine; a tool, not a test). The timeline of 2026-12-05
(tests/results/timeline_llama8b_2026_12_05_h200.jsonl) has the GEMV after RMSNorm+quantize start 3.6 us after the
RMSNorm let it go at 8 rows (GEMV_MMA_TWO_STREAMS: ~204 KiB of shared memory a block, which asks a carveout of
100 %), 2.5 us at 16 rows and 1.7 us at one row (the dp4a GEMV, no carveout asked), and RMSNorm's span follows:
4.8 / 3.6 / 3.9 us. The guess: a multiprocessor whose L1/shared split was last set for a kernel with no
preference has to be drained and set again before a block of a 100 % kernel may start there. This times whole
passes (graph replays, position 64) with the carveout preference of chosen kernels set, variants in turn, each
pass captured anew, and checks that each variant's logits have production's bits:

    python3 tests/probe_carveout.py PRESET ROWS,... REPEATS ROUNDS JSON_OUT

Variants: main (production: only the kernels that opt in to more than 48 KiB ask 100 %); rmsnorm_100 (rmsnorm_q8
too); small_100 (every kernel but the dp4a GEMVs); all_100 (every kernel); dp4a_100 (the dp4a GEMVs alone);
rmsnorm_0 (rmsnorm_q8 asks 0 %: the most L1).
"""
from __future__ import annotations

import json
import sys
import time

from refspec.gpu_launch import CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT

from graph_timing import time_widths, variant_probe

preset, widths, repeats, rounds, out_path, be, tf = variant_probe(sys.argv)
POSITION = 64
DEFAULT = -1  # cudaSharedmemCarveoutDefault: no preference
cache = tf.new_cache(POSITION + max(widths) + 8)
for rows in widths:  # every kernel of every width loaded once, so that the variants can set their attributes
    tf.forward(cache, [1] * POSITION, 0)
    tf.forward(cache, [5] * rows, POSITION)
be.synchronize()
opted = {key: fn.shared_allowed > 48 * 1024 - fn.static_shared  # production's 100 % (Kernel.allow_shared)
         for key, fn in be._functions.items()}


def dp4a(key) -> bool:
    return key[0] == "q8_gemv" and not key[1].startswith("q8_gemv_mma")


VARIANTS = {
    "main": lambda key: None,
    "rmsnorm_100": lambda key: 100 if key[1] == "rmsnorm_q8" else None,
    "small_100": lambda key: None if key[0] == "q8_gemv" else 100,
    "all_100": lambda key: 100,
    "dp4a_100": lambda key: 100 if dp4a(key) else None,
    "rmsnorm_0": lambda key: 0 if key[1] == "rmsnorm_q8" else None,
}


def set_carveouts(choose) -> dict:
    """Each loaded kernel's preference: choose(key), or production's where that is None."""
    chosen = {}
    for key, fn in be._functions.items():
        value = choose(key)
        if value is None:
            value = 100 if opted[key] else DEFAULT
        be.cp.cuda.driver.funcSetAttribute(fn.fn.ptr, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, value)
        chosen["/".join(key)] = value
    return chosen


report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "preset": preset, "position": POSITION,
          "repeats": repeats, "gpu": be.cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "runs": []}
digests = {}
for r in range(rounds):
    for name, choose in VARIANTS.items():
        chosen = set_carveouts(choose)
        cache = tf.new_cache(POSITION + max(widths) + 8)
        cache.graphs.clear()
        tf.forward(cache, [1] * POSITION, 0)
        run = {"variant": name, "round": r, "ms": {}}
        if r == 0:
            run["carveouts"] = chosen
        time_widths(tf, cache, widths, POSITION, repeats, digests, run)
        report["runs"].append(run)
        print(f"round {r} {name:14s} " + "  ".join(f"{rows} rows {ms:.4f} ms" for rows, ms in run["ms"].items())
              + ("" if all(v for key, v in run.items() if key.startswith("same_bits")) else "  BITS DIFFER"), flush=True)
set_carveouts(VARIANTS["main"])
with open(out_path, "w") as f:
    json.dump(report, f, indent=1)
sys.exit(0 if all(v for run in report["runs"] for key, v in run.items() if key.startswith("same_bits")) else 1)
