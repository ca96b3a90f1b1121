"""`refspec bench gemv`: time the Q8_0 GEMV (kernels_raw/q8_gemv.hip) for R = 1 .. 16 activation rows on
matrices shaped like real models, beside the read ceiling measured in the same run (a streaming read kernel,
kernels_raw/stream_read.hip, over a buffer far larger than the L2 cache: a GEMV reads its weights once, so
that is its ceiling) and, for comparison with earlier results, a device-to-device copy.

Method (see also the device notes in ../shared/FACTS.md): every number is the median over `--repeats` replays
of a CUDA graph that runs the kernel once on each of several weight copies (enough copies that the L2 cache
cannot hold them, so weights come from memory), timed with events after warm-up replays. Where the GPU can
(NVIDIA sm_90+), the kernels are launched as in a decode pass, each overlapping the end of the one before it
(refspec/gpu_launch.py; `--no-overlap` launches them one after the other). Bytes are those
read and written: weight quants and scales, activation quants and scales, float32 outputs. The copy is the
faster of a device-to-device cudaMemcpyAsync and cupy.copyto of a 1 GiB buffer, bytes read + written.
Targets (the issue): R=1 at >= 92 % of the read ceiling on matrices >= 64 MB; time(R=8) <= 1.10 x
time(R=1); time(R=16) <= 1.30 x time(R=1).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import statistics

import numpy as np

from refspec import checks
from refspec.errors import UsageError

DEFAULT_SHAPES = "4096x4096,14336x4096,4096x14336,152064x3584"
DEFAULT_ROWS = "1,2,4,8,12,16"
L2_SPAN = 4 * 50 * 2**20  # weight bytes rotated per timing: four times the H100's 50 MB L2
COPY_BYTES = 2**30
READ_BYTES = 4 * 2**30
TARGETS = {"r1_fraction_of_read": 0.92, "r8_over_r1": 1.10, "r16_over_r1": 1.30, "min_matrix_bytes": 64e6}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="N x K weight shapes, comma-separated "
                        f"(default {DEFAULT_SHAPES})")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"activation row counts R (default {DEFAULT_ROWS})")
    parser.add_argument("--repeats", type=int, default=30, help="timed graph replays per measurement (median)")
    parser.add_argument("--mma", action="store_true",
                        help="also time the tensor-core GEMV's mappings (q8_gemv_mma; NVIDIA sm_80+) and the dp4a "
                             "kernel's configuration beside the production one")
    parser.add_argument("--variants", action="store_true",
                        help="also time every GEMV variant (kernel/NR/SPLIT/OCC[/DEPTH], refspec.gpu_mappings.GemvConfig) "
                             "for each R")
    parser.add_argument("--kernels", default="", help="with --variants: time only these kernels (comma-separated, "
                        "e.g. q8_gemv_staged)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="launch each kernel after the one before it has finished (default where the GPU can: "
                             "overlapped boundaries, programmatic dependent launch, as in a decode pass)")
    parser.add_argument("--json-out", default="bench_gemv.json", help="where to write every number (JSON)")


def _parse_list(text: str, what: str) -> list:
    try:
        if what == "shapes":
            return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]
        return [int(v) for v in text.split(",") if v]
    except ValueError as err:
        raise UsageError(f"--{what}: cannot parse {text!r}") from err


class _Timer:
    """Median time of one call of `launch(i)` over i = 0 .. copies-1, replayed as a CUDA graph."""

    def __init__(self, cp, repeats: int):
        self.cp, self.repeats = cp, repeats
        self.stream = cp.cuda.Stream(non_blocking=True)

    def __call__(self, launch, copies: int) -> float:
        cp = self.cp
        with self.stream:
            for i in range(copies):  # compile, load and warm up outside the graph
                launch(i)
            self.stream.synchronize()
            graph = None
            try:
                self.stream.begin_capture()
                for i in range(copies):
                    launch(i)
                graph = self.stream.end_capture()
            except Exception:  # noqa: BLE001 (no graph support: time the launches themselves)
                graph = None

            def replay():
                if graph is not None:
                    graph.launch(self.stream)
                else:
                    for i in range(copies):
                        launch(i)

            for _ in range(3):
                replay()
            times = []
            start, end = cp.cuda.Event(), cp.cuda.Event()
            for _ in range(self.repeats):
                start.record(self.stream)
                replay()
                end.record(self.stream)
                end.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3 / copies)
        return statistics.median(times)


def _copy_bandwidth(cp, timer: _Timer) -> dict:
    """Device-to-device copies of COPY_BYTES, counting bytes read + written: cudaMemcpyAsync and CuPy's own
    copy (cupy.copyto, an elementwise kernel). The reference is the faster of the two."""
    src = cp.ones(COPY_BYTES // 4, np.float32)
    dst = cp.empty_like(src)
    kind = cp.cuda.runtime.memcpyDeviceToDevice

    def memcpy(_):
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, COPY_BYTES, kind, timer.stream.ptr)

    def copyto(_):
        cp.copyto(dst, src)

    return {"memcpy": 2 * COPY_BYTES / timer(memcpy, 1), "cupy_copyto": 2 * COPY_BYTES / timer(copyto, 1)}


def read_bandwidth(be, timer: _Timer, nbytes: int = READ_BYTES) -> float:
    """Bytes per second of kernels_raw/stream_read.hip over `nbytes` (the read ceiling of a GEMV)."""
    cp = be.cp
    data = cp.ones(nbytes // 4, np.int32)
    out = cp.zeros(1, np.int32)
    fn = be.function("stream_read", "stream_read")
    sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]

    def launch(_):
        fn((8 * sms,), (256,), (data, np.int64(nbytes // 16), out))

    return nbytes / timer(launch, 1)  # (the buffer goes with this frame)


def _random_weights(cp, be, n: int, k: int, copies: int):
    from refspec.gpu import GpuQ8

    out = []
    for _ in range(copies):
        q = cp.random.randint(-127, 128, size=(n, k), dtype=np.int32).astype(np.int8)
        d = (cp.random.random((n, k // 32), dtype=np.float32) * 0.01 + 1e-3).astype(np.float16)
        out.append(GpuQ8(q=q, d=d))
    return out


def _launch(be, config, weights: list, xq, xd, y, i: int) -> None:
    be.launch_gemv(config, weights[i], xq, xd, y)


def run(args: argparse.Namespace) -> int:
    from refspec.gpu import GpuBackend, gpu_available
    from refspec.gpu_mappings import GEMV_CONFIGS, GEMV_MMA_VARIANTS, gemv_variants

    checks.output_file(args.json_out, "--json-out")  # before minutes of timing, not after
    if not gpu_available():
        raise UsageError("refspec bench gemv needs a GPU (CuPy sees none)")
    be = GpuBackend(overlap=False if args.no_overlap else None)
    cp = be.cp
    shapes = _parse_list(args.shapes, "shapes")
    row_counts = _parse_list(args.rows, "rows")
    if any(r < 1 or r > 16 for r in row_counts):
        raise UsageError("--rows: each R must be in 1..16")
    timer = _Timer(cp, args.repeats)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    copies_measured = _copy_bandwidth(cp, timer)
    copy_bw = max(copies_measured.values())
    read_bw = read_bandwidth(be, timer)
    report = {
        "hardware": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cupy": cp.__version__,
        "platform": be.platform,
        "overlap": be.overlap,
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "read_bytes_per_second": read_bw,
        "copy_bytes_per_second": copy_bw,
        "copy_bytes_per_second_by_method": copies_measured,
        "targets": TARGETS,
        "results": [],
    }
    print(f"{name}: streaming read {read_bw / 1e9:.0f} GB/s; device-to-device copy {copy_bw / 1e9:.0f} GB/s (read + write; "
          + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in copies_measured.items()) + ")")
    print(f"{'N x K':>14} {'MB':>6} {'R':>3} {'kernel/NR/SPLIT/OCC[/DEPTH]':>26} {'us':>9} {'GB/s':>7} {'of read':>8} "
          f"{'x R=1':>6}")
    rng = np.random.default_rng(0)
    for n, k in shapes:
        if k % 32:
            raise UsageError(f"--shapes: K = {k} is not a multiple of 32")
        w_bytes = n * k + 2 * n * (k // 32)
        copies = max(2, -(-L2_SPAN // w_bytes))
        weights = _random_weights(cp, be, n, k, copies)
        base = None
        for rows in row_counts:
            x = cp.asarray(rng.standard_normal((rows, k)).astype(np.float32))
            xq, xd = be.quantize_q8(x)
            y = cp.empty((rows, n), np.float32)
            cp.cuda.Device().synchronize()  # the timer's stream does not wait for the default stream
            moved = w_bytes + rows * (k + 2 * (k // 32)) + 4 * rows * n
            production = be.gemv_config(rows, k, n)  # what a decode pass launches
            others = [v for v in gemv_variants(rows) if v != production] if args.variants else []
            if args.mma and be.mma_available:
                others += [c for c in [GEMV_CONFIGS[rows], *GEMV_MMA_VARIANTS] if c not in others + [production]]
            # the tensor-core kernel needs integer tensor cores and K/32 even (GemvConfig.takes)
            others = [v for v in others if (v.kernel != "q8_gemv_mma" or be.mma_available) and v.takes(k)]
            if args.kernels:
                others = [v for v in others if v.kernel in args.kernels.split(",")]
            be.gemv_module(c.name(rows) for c in others)  # one compile for all of them
            # (resident activations take slots for all of a tile's rounds: long rows may not fit the GPU)
            others = [v for v in others if be.gemv_fits(v, rows, k)]
            for config in [production, *others]:
                seconds = timer(functools.partial(_launch, be, config, weights, xq, xd, y), copies)
                is_production = config == production
                if is_production and rows == 1:
                    base = seconds
                entry = {
                    "n": n, "k": k, "rows": rows, "kernel": config.kernel, "nr": config.nr, "split": config.split,
                    "occ": config.occ, "depth": config.depth, "resident": config.resident, "groups": config.groups,
                    "even": config.even, "production": is_production,
                    "seconds": seconds, "bytes": moved, "bytes_per_second": moved / seconds,
                    "fraction_of_read": moved / seconds / read_bw, "fraction_of_copy": moved / seconds / copy_bw,
                    "weight_copies": copies,
                    "over_r1": seconds / base if base else None,
                }
                report["results"].append(entry)
                mark = "" if is_production else " (variant)"
                ratio = f"{entry['over_r1']:6.2f}" if base and is_production else "      "
                variant = f"{config.kernel}/{config.nr}/{config.split}/{config.occ}".replace("_gemv", "") + (
                    f"/{config.depth}" if config.depth != 1 else "/res" if config.resident else "") + (
                    f"/g{config.groups}" if config.groups != 1 else "") + ("/even" if config.even else "")
                print(f"{n:>7}x{k:<6} {w_bytes / 1e6:6.1f} {rows:>3} {variant:>26} {seconds * 1e6:9.2f} "
                      f"{moved / seconds / 1e9:7.0f} {entry['fraction_of_read']:8.1%} {ratio}{mark}", flush=True)
        del weights
        cp.get_default_memory_pool().free_all_blocks()
    report["summary"] = _summary(report)
    for line in report["summary"]["lines"]:
        print(line)
    checks.write_json(args.json_out, report, "--json-out", indent=1)
    print(f"wrote {args.json_out}")
    return 0


def _summary(report: dict) -> dict:
    """The targets, checked on the production kernels: a line per shape with its verdict (the one-row bandwidth
    target applies to matrices of TARGETS["min_matrix_bytes"] and more), after a line with the overall one."""
    prod = [e for e in report["results"] if e["production"]]
    lines, shapes = [], []
    for n, k in sorted({(e["n"], e["k"]) for e in prod}):
        by_rows = {e["rows"]: e for e in prod if (e["n"], e["k"]) == (n, k)}
        if 1 not in by_rows:
            continue
        r1 = by_rows[1]
        big = r1["bytes"] >= TARGETS["min_matrix_bytes"]
        parts = [f"{n}x{k}: R=1 {r1['fraction_of_read']:.1%} of the read ceiling"
                 + ("" if big else f" (below {TARGETS['min_matrix_bytes'] / 1e6:.0f} MB: not a target)")]
        missed = [] if not big or r1["fraction_of_read"] >= TARGETS["r1_fraction_of_read"] else ["R=1"]
        for rows, key in ((8, "r8_over_r1"), (16, "r16_over_r1")):
            if rows in by_rows:
                ratio = by_rows[rows]["seconds"] / r1["seconds"]
                parts.append(f"R={rows} {ratio:.2f}x (target {TARGETS[key]:.2f}x)")
                if ratio > TARGETS[key]:
                    missed.append(f"R={rows}")
        shapes.append({"n": n, "k": k, "met": not missed, "missed": missed})
        lines.append("  " + "; ".join(parts) + (": met" if not missed else f": missed ({', '.join(missed)})"))
    met = all(shape["met"] for shape in shapes)
    lines.insert(0, "targets met:" if met else
                 f"targets NOT met (met on {sum(shape['met'] for shape in shapes)} of {len(shapes)} shapes):")
    return {"met": met, "shapes": shapes, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refspec bench gemv", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
