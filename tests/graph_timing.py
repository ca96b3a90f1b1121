"""Timing of GPU work for the device-machine profiling scripts (tests/profile_*.py): work captured as one CUDA
graph, and whole forward passes."""
from __future__ import annotations

import statistics
import time


def graph_seconds(cp, launch_all, repeats: int) -> float:
    """Median seconds of one replay of a graph of what launch_all() launches (run once before the capture, to
    compile and warm up), each replay timed with events right after an untimed one."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        launch_all()
        stream.begin_capture()
        launch_all()
        graph = stream.end_capture()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            graph.launch(stream)
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return statistics.median(times)


def attention_operands(cp, rng, rows: int, heads: int, kv_heads: int, dim: int, cache: int, pos0: int):
    """Random operands of attention_q8 on the device, drawn in this order: q [rows, heads, dim], the k and v caches
    [kv_heads, cache, dim], and pos = [pos0] (tests/profile_attention*.py)."""
    import numpy as np

    q = cp.asarray(rng.standard_normal((rows, heads, dim)).astype(np.float32))
    kc = cp.asarray(rng.standard_normal((kv_heads, cache, dim)).astype(np.float32))
    vc = cp.asarray(rng.standard_normal((kv_heads, cache, dim)).astype(np.float32))
    return q, kc, vc, cp.asarray(np.array([pos0], np.int32))


def force_attention_threads(be, threads: int | None) -> None:
    """Every attention launch of `be` with `threads` threads a block from now on (both of its rules: attention_threads
    and, for attention_values in units of rows, attention_values_threads); None: its own rules again."""
    if threads is None:
        for name in ("attention_threads", "attention_values_threads"):
            be.__dict__.pop(name, None)
    else:
        be.attention_threads = be.attention_values_threads = lambda blocks: threads


def attention_chain_us(be, q, kc, vc, pos, repeats: int) -> float:
    """Microseconds a launch of attention_q8(q, kc, vc, pos) as the backend plans it, from a chain of 32 captured
    as one graph (what 32 layers cost; tests/profile_attention.py, tests/ab_chains.py)."""
    def chain():
        for _ in range(32):
            be.attention_q8(q, kc, vc, pos)
    return round(graph_seconds(be.cp, chain, repeats) * 1e6 / 32, 2)


def replays_seconds(cp, graph, stream, count: int, repeats: int) -> float:
    """Median over `repeats` of the seconds per replay of a captured graph replayed `count` times back to back
    (after one untimed replay), timed with events."""
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        graph.launch(stream)
        start.record(stream)
        for _ in range(count):
            graph.launch(stream)
        end.record(stream)
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3 / count)
    return statistics.median(times)


def pass_seconds(tf, cache, ids, pos: int, repeats: int) -> float:
    """Seconds per forward pass of `ids` at `pos` (graph replays where the Transformer has graphs), after 3
    untimed ones, queued back to back: the host never waits for one before queueing the next."""
    for _ in range(3):
        tf.forward(cache, ids, pos)
    tf.be.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        tf.forward(cache, ids, pos)
    tf.be.synchronize()
    return (time.perf_counter() - t0) / repeats


def fresh_pass_seconds(tf, rows: int, position: int, repeats: int) -> float:
    """pass_seconds of `rows` rows at `position` on a new cache of position + 64 positions, the first `position`
    written by a prompt pass, its passes captured anew (each call sees the backend as it is then)."""
    cache = tf.new_cache(position + 64)
    cache.graphs.clear()  # (the storage may come back with passes captured for it)
    tf.forward(cache, [1] * position, 0)
    return pass_seconds(tf, cache, [5] * rows, position, repeats)


def one_row_operands(cp, be, rng, n: int, k: int, min_copies: int):
    """For the one-row GEMV probes (tests/probe_gemv_*.py): the bytes of an [n, k] Q8_0 matrix, random copies of
    it, at least min_copies and enough (300 MB) that the L2 cache holds none when it is read again, and one
    random quantized activation row (xq, xd) on the device."""
    import math

    import numpy as np

    from refspec.bench_gemv import _random_weights

    weight_bytes = n * k + n * (k // 32) * 2
    copies = _random_weights(cp, be, n, k, max(min_copies, math.ceil(300e6 / weight_bytes)))
    xq = cp.asarray(rng.integers(-127, 128, (1, k), dtype=np.int8))
    xd = cp.asarray((rng.random((1, k // 32), dtype=np.float32) * 0.01 + 1e-3).astype(np.float16))
    return weight_bytes, copies, xq, xd


def one_row_reference(cp, be, rng, ws, xq, xd):
    """For the one-row GEMV probes: the production GEMV's bits over the first of the weight copies `ws` with a
    random residual, and what it took: (config, y [1, n] to write into, base [1, n], bits as uint32)."""
    import numpy as np

    n, k = ws[0].shape
    base = cp.asarray(rng.standard_normal((1, n), dtype=np.float32))
    y = cp.empty((1, n), np.float32)
    config = be.gemv_config(1, k, n)
    be.launch_gemv(config, ws[0], xq, xd, y, base=base)
    return config, y, base, cp.asnumpy(y).view(np.uint32)


def variant_probe(argv):
    """The set-up the whole-pass variant probes share (tests/probe_norm_boundary.py, probe_carveout.py,
    probe_sync_domain.py): arguments PRESET ROWS,... REPEATS ROUNDS JSON_OUT, the preset's model on a new GpuBackend.
    Returns (preset, widths, repeats, rounds, out_path, backend, transformer)."""
    from refspec.bench_decode import preset_model_path
    from refspec.forward import Transformer
    from refspec.gguf_model import load
    from refspec.gpu import GpuBackend

    preset, widths, repeats, rounds, out_path = (argv[1], [int(r) for r in argv[2].split(",")], int(argv[3]),
                                                 int(argv[4]), argv[5])
    model = load(preset_model_path(preset, print), log=lambda m: None)
    be = GpuBackend()
    return preset, widths, repeats, rounds, out_path, be, Transformer(model, be)


def time_widths(tf, cache, widths, position: int, repeats: int, digests: dict, run: dict) -> None:
    """For each width: run["ms"][rows], the pass's ms (pass_seconds), and run["same_bits_<rows>"], whether its
    logits have the bits of the first run's at that width (digests: width -> sha256, filled by the first run)."""
    import hashlib

    import numpy as np

    vocab = tf.config.n_vocab
    for rows in widths:
        ids = [(7 * i + 3) % vocab for i in range(rows)]
        run["ms"][rows] = round(1e3 * pass_seconds(tf, cache, ids, position, repeats), 4)
        logits = tf.be.to_host(tf.forward(cache, ids, position))
        digest = hashlib.sha256(np.ascontiguousarray(logits).view(np.uint8)).hexdigest()
        run["same_bits_%d" % rows] = digests.setdefault(rows, digest) == digest
