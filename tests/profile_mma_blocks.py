"""Whether the tensor-core GEMV gains from streaming blocks at 8 and 16 rows (device machine; a tool, not a test):
each shape's GEMV timed with the backend's own grid, then with its blocks capped at 132, 264 and 396 (each block
then streams many tiles: GpuBackend.launch_gemv's max_blocks), over enough weight copies that L2 holds none.

    python3 tests/profile_mma_blocks.py OUT.json

Prints one line per measurement; OUT.json gets them all (us per GEMV).
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.gpu import GpuBackend
from refspec.gpu_mappings import gemv_mma
from refspec.model import Q8Matrix

sys.path.insert(0, "tests")
from graph_timing import graph_seconds  # noqa: E402

SHAPES = [(14336, 4096), (28672, 4096), (4096, 14336), (6144, 4096)]

be = GpuBackend()
cp = be.cp
rng = np.random.default_rng(0)
out = []
for n, k in SHAPES:
    copies = [be.upload_q8(Q8Matrix(rng.integers(-127, 128, (n, k), dtype=np.int8),
                                    rng.uniform(1e-3, 2e-3, (n, k // 32)).astype(np.float16)))
              for _ in range(max(2, int(200e6 // (n * k))))]
    for rows in (8, 16):
        config = gemv_mma(rows)
        xq, xd = be.quantize_q8(cp.asarray(rng.standard_normal((rows, k)).astype(np.float32)))
        y = cp.empty((rows, n), np.float32)
        for most in (None, 132, 264, 396):
            seconds = graph_seconds(cp, lambda: [be.launch_gemv(config, w, xq, xd, y, max_blocks=most)
                                                 for w in copies], 30) / len(copies)
            row = {"n": n, "k": k, "rows": rows, "max_blocks": most, "us": round(seconds * 1e6, 2)}
            out.append(row)
            print(row, flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
