"""Time CPU forward passes of R rows under two values of cpu_gemv.FEW_ROWS (the largest row count that the
few-rows loop order takes; more rows go to the row-groups order), interleaved, on the models given.

    python tests/profile_cpu_rows.py OUT.json MODEL.gguf [MODEL.gguf ...]

Each (FEW_ROWS, R) is timed in ROUNDS rounds of REPEATS passes at position 64 after a 64-token prompt; the
JSON holds every round's median and the machine. The bits do not depend on FEW_ROWS
(tests/test_cpu_gemv_kernel.py); only the time does."""
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

import refspec
from refspec import cpu_gemv

SETTINGS = (2, 5, 8)
ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
ROUNDS, REPEATS = 3, 5


def time_passes(model, few_rows: int) -> dict:
    cpu_gemv.FEW_ROWS = few_rows
    tf = refspec.Transformer(model, refspec.make_backend("cpu"))  # a fresh backend: its column ranges depend on it
    cache = tf.new_cache(512)
    tf.forward(cache, list(range(1, 65)), 0)
    out = {}
    for rows in ROWS:
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            tf.forward(cache, list(range(100, 100 + rows)), 64)
            times.append(time.perf_counter() - start)
        out[rows] = float(np.median(times)) * 1e3
    return out


def main(out_path: str, paths: list[str]) -> None:
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": refspec.bench_decode.cpu_name(), "cores": os.cpu_count(),
                          "platform": platform.platform(), "load_average": os.getloadavg()},
              "rounds": ROUNDS, "repeats": REPEATS, "position": 64, "models": {}}
    for path in paths:
        model = refspec.load(path, log=lambda m: None)
        rounds = {few: {rows: [] for rows in ROWS} for few in SETTINGS}
        for _ in range(ROUNDS):
            for few in SETTINGS:
                for rows, ms in time_passes(model, few).items():
                    rounds[few][rows].append(round(ms, 2))
        report["models"][os.path.basename(path)] = {
            "file_bytes": os.path.getsize(path),
            "pass_ms": {f"few_rows_{few}": {str(r): v for r, v in by_rows.items()} for few, by_rows in rounds.items()}}
        for few in SETTINGS:
            print(os.path.basename(path), f"FEW_ROWS={few}",
                  " ".join(f"R{r}:{np.median(v):.1f}" for r, v in rounds[few].items()), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    import refspec.bench_decode  # noqa: F401  (cpu_name)

    main(sys.argv[1], sys.argv[2:])
