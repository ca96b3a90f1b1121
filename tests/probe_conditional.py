"""Would CUDA conditional graph nodes make a verify pass cheaper where it guesses nothing, and free where it comes
past a run's end? A probe (device machine, a tool, not a test; CUDA 12.4+ drivers), through
refspec/gpu_conditional.py: during the stream capture of a pass, kernels_raw/graph_conditions.hip reads the
live-row count and sets two conditions, `one` (count == 1) and `many` (count > 1); an IF node on each runs its
body: the one-row pass + argmax for `one`, the WIDTH-row pass + argmax computing its live rows for `many`. A count
of 0 runs neither. Beside it, one SWITCH node (CUDA 12.8+: what refspec's chained passes use there) with the
bodies none, one row, WIDTH rows, its value min(count, 2) (graph_conditions.hip's pass_branch).

On edit-code's context (165 tokens, as tests/profile_spec.py), timed as graph replays back to back, and the
(id, flag) rows each writes compared:
  * plain: the WIDTH-row pass + argmax as the backend captures it without conditional nodes, at 0, 1 and WIDTH
    live rows;
  * conditional, switch: the same pass behind the two IF nodes, behind the SWITCH node, at 0, 1 and WIDTH;
  * one_row: the one-row pass + argmax alone.

    python3 tests/probe_conditional.py MODEL.gguf [WIDTH] [REPEATS]
"""
from __future__ import annotations

import json
import sys

import numpy as np

from refspec.bench_decode import COPY_PROMPTS
from refspec.cli import load_model, load_tokenizer
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.errors import DeviceError
from refspec.gpu import GpuBackend
from refspec.gpu_conditional import conditional_capture

from graph_timing import replays_seconds

path = sys.argv[1]
width = int(sys.argv[2]) if len(sys.argv) > 2 else 8
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 30
CONTEXT = 165

model = load_model(path)
tok = load_tokenizer(model)
be = GpuBackend()
cp = be.cp
tf = Transformer(model, be)
prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": COPY_PROMPTS["edit-code"]}],
                                            add_generation_prompt=True))
context = (prompt + generate(tf, prompt, 48, eog_ids=()).ids)[:CONTEXT]
n = len(context)
cache = tf.new_cache(n + 64)
tf.forward(cache, context[:-1], 0)
ids_d = cp.asarray(np.array([context[-1]] * width, np.int32))
pos_d = cp.asarray(np.array([n - 1], np.int32))
live = cp.asarray(np.array([width], np.int32))
cond = conditional_capture(cp, be.platform)
if cond is None:
    sys.exit("probe_conditional: this GPU's driver has no conditional graph nodes (NVIDIA, CUDA 12.4+)")
kept = []  # every pass captured: its graph writes into the arrays it allocated
# each graph's argmax rows, (id, flag) a row
plain_ids, conditional_ids, switch_ids = (cp.full((width, 2), -7, np.int32) for _ in range(3))


def wide(result):
    be.live_rows(live)
    try:
        kept.append(be.argmax_device(tf.run(cache, ids_d, pos_d, width), result))
    finally:
        be.live_rows(None)


def one_row(result):
    kept.append(be.argmax_device(tf.run(cache, ids_d[:1], pos_d, 1), result[:1]))


def plain_graph(launch_all):
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        launch_all()
        stream.begin_capture()
        launch_all()
        return stream.end_capture(), stream


def conditional_graph():
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        wide(conditional_ids), one_row(conditional_ids)  # compiled and warm
        be.function("graph_conditions", "pass_conditions")
        stream.begin_capture()
        one, many = cond.handles(stream, 2)
        be.pass_conditions(one, many, live, width)
        cond.if_node(stream, one, lambda: one_row(conditional_ids))
        cond.if_node(stream, many, lambda: wide(conditional_ids))
        return stream.end_capture(), stream


def switch_graph():
    """The same with one SWITCH node (CUDA 12.8+): body 0 empty, 1 the one-row pass, 2 the wide one."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        be.function("graph_conditions", "pass_branch")
        stream.begin_capture()
        (handle,) = cond.handles(stream, 1)
        be.pass_branch(handle, live, width)
        cond.switch_node(stream, handle, [None, lambda: one_row(switch_ids), lambda: wide(switch_ids)])
        return stream.end_capture(), stream


def replay_ms(graph, stream) -> float:
    return round(1e3 * replays_seconds(cp, graph, stream, 8, repeats), 4)


report = {"model": path, "width": width, "context_tokens": n}
plain = plain_graph(lambda: wide(plain_ids))
conditional = conditional_graph()
try:
    switch = switch_graph()
except DeviceError as err:  # a driver older than CUDA 12.8
    switch = None
    report["switch_error"] = str(err)
single = plain_graph(lambda: one_row(cp.empty((1, 2), np.int32)))


def results(graph, stream, ids, count: int):
    """The (id, flag) rows a replay at `count` live rows writes (rows past them: -7, as set before)."""
    live[...] = count
    ids[...] = -7
    cp.cuda.Device().synchronize()  # (the null stream's writes, before the replay's stream reads them)
    graph.launch(stream)
    stream.synchronize()
    return cp.asnumpy(ids).tolist()


for count in (0, 1, width):  # the same ids at every count, rows past the live ones untouched
    a, b = results(*plain, plain_ids, count), results(*conditional, conditional_ids, count)
    c = results(*switch, switch_ids, count) if switch else a
    report[f"ids_live{count}"] = {"plain": a, "conditional": b, "switch": c, "equal": a == b == c}
for _ in range(2):  # side by side, twice (a process's pass times drift)
    for count in (0, 1, width):
        live[...] = count
        cp.cuda.Device().synchronize()
        report.setdefault(f"plain_live{count}_ms", []).append(replay_ms(*plain))
        report.setdefault(f"conditional_live{count}_ms", []).append(replay_ms(*conditional))
        if switch:
            report.setdefault(f"switch_live{count}_ms", []).append(replay_ms(*switch))
    report.setdefault("one_row_ms", []).append(replay_ms(*single))
print(json.dumps(report))
