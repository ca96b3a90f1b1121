"""The tensor-core GEMV's grid for matrices of a few more 16-row tiles than the GPU holds at once (device machine;
a tool, not a test). _mma_grid gives such a matrix half as many blocks as tiles, two tiles each (qwen2.5-32b's
down projection at 8 rows: 320 tiles, 160 blocks, where 264 fit at once); where the hardware puts those blocks
decides how many multiprocessors read. For each shape, row count and tensor-core mapping this times the grids
one could give it, alone, as bench gemv does (median of graph replays over weight copies L2 cannot hold, launches
overlapped as in a pass), and checks each grid's outputs against production's, as uint32:
  half   ceil(tiles / 2) blocks of two tiles (production's where the tiles are 1-2 waves)
  slots  as many blocks as fit at once, each taking tiles b, b + blocks, ...
  tiles  a block a tile, the last ones in a second wave
for production's mapping and, at up to 8 rows, GEMV_MMA_NARROW, GEMV_MMA and GEMV_MMA with two rounds in flight
(less shared memory, so more blocks a multiprocessor); at 9-16 rows production's and GEMV_MMA (mappings of two
streams a block or resident activations have grids of their own and are left out).

    python3 tests/probe_mma_grid.py NxK,... ROWS,... [REPEATS] [JSON_OUT]
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from refspec.bench_gemv import _random_weights, _Timer, read_bandwidth
from refspec.gpu import GpuBackend
from refspec.gpu_mappings import GEMV_MMA, GEMV_MMA_NARROW

shapes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1].split(",")]
widths = [int(r) for r in sys.argv[2].split(",")]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 30
out_path = sys.argv[4] if len(sys.argv) > 4 else None
be = GpuBackend()
cp = be.cp
timer = _Timer(cp, repeats)
rng = np.random.default_rng(7)
report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
          "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
          "multiprocessors": be._multiprocessors, "read_bytes_per_second": read_bandwidth(be, timer), "results": []}
print(f"read ceiling {report['read_bytes_per_second'] / 1e9:.0f} GB/s", flush=True)


def launcher(config, rows, n, k, blocks, shared):
    kernel = be._gemv_function(config, rows)
    kernel.allow_shared(shared)

    def launch(w, xq, xd, y):
        kernel((blocks,), (config.threads(),),
               (w.q, w.d, xq, xd, y, np.int32(n), np.int32(k), np.int32(rows), 0), shared_mem=shared)
    return launch


for n, k in shapes:
    nbytes = n * k + n * (k // 32) * 2
    ws = _random_weights(cp, be, n, k, max(2, math.ceil(300e6 / nbytes)))
    for rows in widths:
        xq = cp.asarray(rng.integers(-127, 128, (rows, k), dtype=np.int8))
        xd = cp.asarray((rng.random((rows, k // 32), dtype=np.float32) * 0.01 + 1e-3).astype(np.float16))
        production = be.gemv_config(rows, k, n)
        y = cp.empty((rows, n), np.float32)
        be.launch_gemv(production, ws[0], xq, xd, y)
        reference = cp.asnumpy(y).view(np.uint32)
        seconds = timer(lambda i: be.launch_gemv(production, ws[i], xq, xd, y), len(ws))
        entry = {"n": n, "k": k, "rows": rows, "config": asdict(production), "name": production.name(rows),
                 "grid": "production", "us": round(seconds * 1e6, 2),
                 "read_fraction": round(nbytes / seconds / report["read_bytes_per_second"], 4)}
        report["results"].append(entry)
        print(f"{n}x{k} R={rows} {production.name(rows):36s} production {entry['us']:8.2f} us", flush=True)
        if production.kernel != "q8_gemv_mma":
            continue
        others = (GEMV_MMA_NARROW, GEMV_MMA, replace(GEMV_MMA, occ=2)) if rows <= 8 else (GEMV_MMA,)
        for config in [production] + [c for c in others if c != production]:
            if config.groups != 1 or config.resident:
                continue
            kernel = be._gemv_function(config, rows)
            one_tile, streamed, wave, slots = be._mma_capacity(kernel, config, rows, k)
            tiles = be._blocks(n, config.weight_rows_per_block())
            grids = {"half": (math.ceil(tiles / 2), streamed), "slots": (min(slots, tiles), streamed),
                     "tiles": (tiles, one_tile)}
            for grid, (blocks, shared) in grids.items():
                launch = launcher(config, rows, n, k, blocks, shared)
                y = cp.empty((rows, n), np.float32)
                try:
                    launch(ws[0], xq, xd, y)
                    same = bool(np.array_equal(cp.asnumpy(y).view(np.uint32), reference))
                    seconds = timer(lambda i: launch(ws[i], xq, xd, y), len(ws))
                except Exception as e:  # noqa: BLE001 (a probe: say it and go on)
                    print(f"{n}x{k} R={rows} {config.name(rows)} {grid}: {type(e).__name__}: {e}", flush=True)
                    continue
                entry = {"n": n, "k": k, "rows": rows, "config": asdict(config), "name": config.name(rows),
                         "grid": grid, "blocks": blocks, "shared": shared, "tiles": tiles,
                         "resident_a_multiprocessor": kernel.resident_blocks(config.threads(), shared),
                         "same_bits": same, "us": round(seconds * 1e6, 2),
                         "read_fraction": round(nbytes / seconds / report["read_bytes_per_second"], 4)}
                report["results"].append(entry)
                print(f"{n}x{k} R={rows} {config.name(rows):36s} {grid:6s} {blocks:4d} blocks "
                      f"({entry['resident_a_multiprocessor']}/mp) {entry['us']:8.2f} us  "
                      f"bits {'same' if same else 'DIFFER'}", flush=True)
    del ws
if out_path:
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
sys.exit(0 if all(r.get("same_bits", True) for r in report["results"]) else 1)
