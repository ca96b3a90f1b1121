"""One launch of each given GEMV configuration on one shape, for ncu's per-kernel counters (device only).

    python3 tests/profile_gemv.py N K ROWS KERNEL/NR/SPLIT/OCC[/DEPTH] ...   e.g. 14336 4096 1 q8_gemv_mma/8/1/3
                                                                          or 5120 27648 1 q8_gemv/2/1/1/2
Each configuration runs twice (the first launch compiles and warms up): under
`ncu --launch-skip 1 --launch-count 1 -k regex:q8_gemv`, give one configuration a run.
"""
import sys

import numpy as np

from refspec.gpu import GpuBackend
from refspec.gpu_mappings import GemvConfig
from refspec.model import Q8Matrix

n, k, rows = (int(v) for v in sys.argv[1:4])
configs = [GemvConfig(kernel, *(int(v) for v in numbers)) for kernel, *numbers in (c.split("/") for c in sys.argv[4:])]
be = GpuBackend()
cp = be.cp
rng = np.random.default_rng(0)

w = be.upload_q8(Q8Matrix(rng.integers(-127, 128, (n, k), dtype=np.int8),
                          rng.uniform(1e-3, 2e-3, (n, k // 32)).astype(np.float16)))
xq, xd = be.quantize_q8(cp.asarray(rng.standard_normal((rows, k)).astype(np.float32)))
y = cp.empty((rows, n), np.float32)
for config in configs:
    for _ in range(2):
        be.launch_gemv(config, w, xq, xd, y)
    cp.cuda.Device().synchronize()
print("ok", [c.name(rows) for c in configs])
