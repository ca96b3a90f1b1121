"""`refspec bench cpu`: what a model costs on the CPU: load time, peak resident memory, one prompt pass and
decoding steps.

The model is a file (-m) or a preset of real-model shapes (--preset, refspec/synthetic.py), written once into
the cache as `refspec bench decode --preset` does. The measurement runs in a fresh interpreter (`python -m refspec.bench_cpu
--measure FILE`), so that the peak resident size (ru_maxrss) is that of loading and running this model alone,
the interpreter and its libraries included. CPU seconds (all threads) are reported beside wall seconds: on a
shared machine they say what a pass costs when the cores are not busy with other work.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

PROMPT_TOKENS, DECODE_TOKENS = 64, 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    from refspec.synthetic import PRESETS

    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-m", "--model", metavar="GGUF", help="model file to measure")
    which.add_argument("--preset", choices=sorted(PRESETS), help="a random-weight model of these shapes, "
                       "written once to $XDG_CACHE_HOME/refspec/synthetic (llama-8b is 8.0 GB, qwen2.5-32b 34 GB)")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS, metavar="N",
                   help=f"rows of the prompt pass (default {PROMPT_TOKENS})")
    p.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS, metavar="N",
                   help=f"decoding steps after it (default {DECODE_TOKENS}; the median is reported)")
    from refspec.cli import add_threads_argument

    add_threads_argument(p)
    p.add_argument("--json-out", metavar="FILE", help="also write every number, the machine and the date as JSON")


def run(args) -> int:
    from refspec import checks
    from refspec.bench_decode import preset_model_path
    from refspec.cli import note
    from refspec.errors import UsageError

    if args.prompt_tokens < 1 or args.decode_tokens < 0:
        raise UsageError("--prompt-tokens must be at least 1, --decode-tokens at least 0")
    if args.json_out:
        checks.output_file(args.json_out, "--json-out")
    path = pathlib.Path(args.model) if args.model else preset_model_path(args.preset, note)
    result = measure(path, args.prompt_tokens, args.decode_tokens, args.threads)
    if result is None:
        return 1  # the measurement printed its one error line
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "preset": args.preset, "model": str(path), **result}
    print_report(report)
    if args.json_out:
        checks.write_json(args.json_out, report, "--json-out")
    return 0


def measure(path: pathlib.Path, prompt_tokens: int, decode_tokens: int, threads: int | None) -> dict | None:
    """Run `--measure` in a fresh interpreter; its one JSON line is the result (its stderr, progress and
    errors, passes through). None if it failed."""
    command = [sys.executable, "-m", "refspec.bench_cpu", "--measure", str(path),
               str(prompt_tokens), str(decode_tokens), str(threads or 0)]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure_here(path: str, prompt_tokens: int, decode_tokens: int, threads: int | None) -> dict:
    """Load, one prompt pass of `prompt_tokens` rows, `decode_tokens` single-row steps; times and peak RSS."""
    import numpy as np

    from refspec.backends import CpuBackend
    from refspec.forward import Transformer
    from refspec.gguf_model import load

    from refspec import cpu_attention, cpu_gemv, cpu_ops

    t_compile = time.perf_counter()
    cpu_gemv.warm_up()  # numba's compiled loops: loaded from its cache, or compiled on the first run
    cpu_attention.warm_up()
    cpu_ops.warm_up()
    t0 = time.perf_counter()
    model = load(path)
    t1 = time.perf_counter()
    tf = Transformer(model, CpuBackend(threads=threads))
    t2 = time.perf_counter()
    cfg = model.config
    if prompt_tokens + decode_tokens > cfg.n_ctx:
        from refspec.errors import UsageError

        raise UsageError(f"--prompt-tokens {prompt_tokens} + --decode-tokens {decode_tokens} exceed the model's "
                         f"context of {cfg.n_ctx} positions; give fewer")
    ids = [int(i) for i in np.random.default_rng(0).integers(0, cfg.n_vocab, prompt_tokens)]
    cache = tf.new_cache(prompt_tokens + decode_tokens)
    c3, t3 = time.process_time(), time.perf_counter()
    logits = tf.forward(cache, ids, 0)
    c4, t4 = time.process_time(), time.perf_counter()
    steps, step_cpu = [], []
    token = int(np.argmax(logits[-1]))
    for i in range(decode_tokens):
        cpu, start = time.process_time(), time.perf_counter()
        logits = tf.forward(cache, [token], prompt_tokens + i)
        token = int(np.argmax(logits[-1]))
        steps.append(time.perf_counter() - start)
        step_cpu.append(time.process_time() - cpu)
    size = sum(os.path.getsize(f) for f in model.files)  # a split model's parts together
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    step = statistics.median(steps) if steps else None  # (unrounded: a tiny model's step rounds to 0.000 s)
    return {
        "file_bytes": size, "arch": cfg.arch, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
        "n_vocab": cfg.n_vocab, "threads": tf.be.running_threads, "streamed": tf.weights.output.stack.wf is None,
        "compile_seconds": round(t0 - t_compile, 3),
        "load_seconds": round(t1 - t0, 3), "upload_seconds": round(t2 - t1, 3),
        "prompt_tokens": prompt_tokens, "prompt_seconds": round(t4 - t3, 3),
        "prompt_tokens_per_second": round(prompt_tokens / (t4 - t3), 3),
        "prompt_cpu_seconds": round(c4 - c3, 3),
        "decode_step_seconds": [round(s, 3) for s in steps],
        "decode_step_seconds_median": None if step is None else round(step, 6),
        "decode_step_cpu_seconds": [round(s, 3) for s in step_cpu],
        "decode_step_cpu_seconds_median": round(statistics.median(step_cpu), 3) if step_cpu else None,
        "decode_tokens_per_second": round(1 / step, 3) if step else None,
        "peak_rss_bytes": peak, "peak_rss_over_file": round(peak / size, 4),
    }


def machine() -> dict:
    from refspec.progress import physical_memory

    import numpy as np

    from refspec.bench_decode import cpu_name

    cpu = cpu_name()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on a shared machine
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "memory_bytes": physical_memory(), "load_average_1min": load,
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": _version("numba")}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def print_report(r: dict) -> None:
    m = r["machine"]
    print(f"{r['model']} ({r['file_bytes'] / 1e9:.2f} GB, {r['arch']}, {r['n_layer']} layers), "
          f"{m['cpu']}, {m['cpu_cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB, {r['threads']} threads, "
          f"weights {'streamed from the mapped file' if r['streamed'] else 'resident as float32'}")
    print(f"  compiled loops    {r['compile_seconds']:.1f} s (numba: compiled on the first run, then cached)")
    print(f"  load              {r['load_seconds'] + r['upload_seconds']:.1f} s "
          f"(read and check {r['load_seconds']:.1f} s, backend {r['upload_seconds']:.1f} s)")
    print(f"  peak memory       {r['peak_rss_bytes'] / 1e9:.2f} GB = {r['peak_rss_over_file']:.3f}x the file")
    print(f"  prompt pass       {r['prompt_tokens']} tokens in {r['prompt_seconds']:.2f} s "
          f"({r['prompt_tokens_per_second']:.1f} tokens/s; {r['prompt_cpu_seconds']:.1f} CPU s)")
    if r["decode_step_seconds"]:
        print(f"  decoding step     {r['decode_step_seconds_median']:.3f} s median "
              f"({r['decode_tokens_per_second']:.2f} tokens/s; {r['decode_step_cpu_seconds_median']:.2f} CPU s; "
              f"steps {r['decode_step_seconds']})")


def _measure_main(argv: list[str]) -> None:
    """The child: prints one JSON line, or one error line and exit status 1."""
    from refspec.errors import RefspecError

    path, prompt_tokens, decode_tokens, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    try:
        print(json.dumps(measure_here(path, prompt_tokens, decode_tokens, threads or None)))
    except RefspecError as e:
        sys.exit(f"refspec: error: {e}")
    except MemoryError:
        sys.exit("refspec: error: out of memory")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        _measure_main(sys.argv[2:])
    else:
        sys.exit("usage: refspec bench cpu --help")
