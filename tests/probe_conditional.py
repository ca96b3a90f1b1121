"""Would CUDA conditional graph nodes make a verify pass cheaper where it guesses nothing, and free where it comes
past a run's end? A probe (device machine, a tool, not a test; CUDA 12.4+ drivers). CuPy 14.2 has no API for
conditional nodes, so this goes through the driver (ctypes): during the stream capture of a pass, a one-thread
kernel reads the live-row count and sets two conditions, `one` (count == 1) and `many` (count > 1); an IF node
on each runs its body, captured into the node's graph (cuStreamBeginCaptureToGraph): the one-row pass + argmax
for `one`, the WIDTH-row pass + argmax computing its live rows for `many`. A count of 0 runs neither.

On edit-code's context (165 tokens, as tests/profile_spec.py), timed as graph replays back to back:
  * plain: the WIDTH-row pass + argmax as the backend captures it, at 0, 1 and WIDTH live rows;
  * conditional: the same pass behind the two IF nodes, at 0, 1 and WIDTH live rows;
  * one_row: the one-row pass + argmax alone.

    python3 tests/probe_conditional.py MODEL.gguf [WIDTH] [REPEATS]
"""
from __future__ import annotations

import ctypes
import json
import sys

import numpy as np

from refspec.bench_decode import COPY_PROMPTS
from refspec.cli import load_model, load_tokenizer
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gpu import GpuBackend

from graph_timing import replays_seconds

path = sys.argv[1]
width = int(sys.argv[2]) if len(sys.argv) > 2 else 8
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 30
CONTEXT = 165

libcuda = ctypes.CDLL("libcuda.so.1")
libcuda.cuInit(0)
P, U64, SZ = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t
CU_GRAPH_NODE_TYPE_CONDITIONAL, CU_GRAPH_COND_TYPE_IF = 13, 0
CU_STREAM_SET_CAPTURE_DEPENDENCIES = 1
CU_STREAM_CAPTURE_MODE_RELAXED = 2


class ConditionalParams(ctypes.Structure):  # CUDA_CONDITIONAL_NODE_PARAMS
    _fields_ = [("handle", U64), ("type", ctypes.c_int), ("size", ctypes.c_uint), ("phGraph_out", P), ("ctx", P)]


class NodeParams(ctypes.Structure):  # CUgraphNodeParams: type, 3 reserved ints, a 232-byte union, a reserved long long
    _fields_ = [("type", ctypes.c_int), ("reserved0", ctypes.c_int * 3), ("conditional", ConditionalParams),
                ("union_rest", ctypes.c_char * (29 * 8 - ctypes.sizeof(ConditionalParams))),
                ("reserved2", ctypes.c_longlong)]


assert ctypes.sizeof(NodeParams) == 256


def check(status, what):
    if status:
        name = ctypes.c_char_p()
        libcuda.cuGetErrorName(status, ctypes.byref(name))
        raise RuntimeError(f"{what}: {name.value}")


def driver(name: str, *argtypes):
    """The driver entry point `name` as of CUDA 12.4 (cuGetProcAddress: the ABI of that version)."""
    fn, found = P(), ctypes.c_int()
    check(libcuda.cuGetProcAddress_v2(name.encode(), ctypes.byref(fn), 12040, U64(0), ctypes.byref(found)),
          f"cuGetProcAddress({name})")
    if not fn.value:
        raise RuntimeError(f"the driver has no {name}")
    return ctypes.CFUNCTYPE(ctypes.c_int, *argtypes)(fn.value)


R = ctypes.POINTER
get_capture_info = driver("cuStreamGetCaptureInfo", P, R(ctypes.c_int), R(U64), R(P), R(P), R(P), R(SZ))
add_node = driver("cuGraphAddNode", R(P), P, P, P, SZ, R(NodeParams))
update_dependencies = driver("cuStreamUpdateCaptureDependencies", P, R(P), P, SZ, ctypes.c_uint)
begin_capture_to_graph = driver("cuStreamBeginCaptureToGraph", P, P, P, P, SZ, ctypes.c_int)
end_capture = driver("cuStreamEndCapture", P, R(P))
handle_create = driver("cuGraphConditionalHandleCreate", R(U64), P, P, ctypes.c_uint, ctypes.c_uint)


def capture_info(stream: int):
    """(graph, dependency nodes, count) of a capturing stream."""
    status, ident, graph, deps, edges, count = ctypes.c_int(), U64(), P(), P(), P(), SZ()
    check(get_capture_info(P(stream), ctypes.byref(status), ctypes.byref(ident), ctypes.byref(graph),
                           ctypes.byref(deps), ctypes.byref(edges), ctypes.byref(count)), "cuStreamGetCaptureInfo")
    return graph, deps, count


def current_context():
    ctx = P()
    check(libcuda.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    return ctx


def new_handle(graph) -> int:
    handle = U64()
    check(handle_create(ctypes.byref(handle), graph, current_context(), 0, 0), "cuGraphConditionalHandleCreate")
    return handle.value


def add_if_node(stream: int, handle: int, kind: int = 0, size: int = 1):
    """An IF node (or a SWITCH node of `size` bodies: kind 2) on `handle` after the capture's current nodes, made
    the capture's next dependency; its body graph (the list of them, for a SWITCH)."""
    graph, deps, count = capture_info(stream)
    params = NodeParams()
    params.type = CU_GRAPH_NODE_TYPE_CONDITIONAL
    params.conditional.handle = handle
    params.conditional.type = kind
    params.conditional.size = size
    params.conditional.ctx = current_context()
    node = P()
    check(add_node(ctypes.byref(node), graph, deps, None, count, ctypes.byref(params)), "cuGraphAddNode")
    body = ctypes.cast(params.conditional.phGraph_out, ctypes.POINTER(P))  # the driver's array of bodies
    check(update_dependencies(P(stream), ctypes.byref(node), None, SZ(1), CU_STREAM_SET_CAPTURE_DEPENDENCIES),
          "cuStreamUpdateCaptureDependencies")
    return body[0] if kind == 0 else [body[i] for i in range(size)]


def capture_into(body, launch_all) -> None:
    """launch_all()'s work captured into the graph `body`, on a stream of its own."""
    stream = cp.cuda.Stream(non_blocking=True)
    check(begin_capture_to_graph(P(stream.ptr), P(body), None, None, SZ(0), CU_STREAM_CAPTURE_MODE_RELAXED),
          "cuStreamBeginCaptureToGraph")
    with stream:
        launch_all()
    out = P()
    check(end_capture(P(stream.ptr), ctypes.byref(out)), "cuStreamEndCapture")


SET_CONDITIONS = r"""
extern "C" __device__ void cudaGraphSetConditional(unsigned long long handle, unsigned int value);
extern "C" __global__ void set_conditions(unsigned long long one, unsigned long long many, const int* live) {
  const int n = *live;
  cudaGraphSetConditional(one, n == 1);
  cudaGraphSetConditional(many, n > 1);
}
extern "C" __global__ void set_switch(unsigned long long handle, const int* live) {
  const int n = *live;
  cudaGraphSetConditional(handle, n < 0 ? 0 : n > 1 ? 2 : n);
}
"""

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
module = cp.RawModule(code=SET_CONDITIONS)
set_conditions, set_switch = module.get_function("set_conditions"), module.get_function("set_switch")
kept = []  # every pass captured: its graph writes into the arrays it allocated
plain_ids, conditional_ids, switch_ids = (cp.full((width, 2), -7, np.int32) for _ in range(3))  # argmax (id, flag) a row


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
        stream.begin_capture()
        graph = capture_info(stream.ptr)[0]
        one, many = new_handle(graph), new_handle(graph)
        set_conditions((1,), (1,), (np.uint64(one), np.uint64(many), live))
        capture_into(add_if_node(stream.ptr, one), lambda: one_row(conditional_ids))
        capture_into(add_if_node(stream.ptr, many), lambda: wide(conditional_ids))
        return stream.end_capture(), stream


def switch_graph():
    """The same with one SWITCH node (CUDA 12.8+): body 0 empty, 1 the one-row pass, 2 the wide one."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        handle = new_handle(capture_info(stream.ptr)[0])
        set_switch((1,), (1,), (np.uint64(handle), live))
        bodies = add_if_node(stream.ptr, handle, kind=2, size=3)
        capture_into(bodies[1], lambda: one_row(switch_ids))
        capture_into(bodies[2], lambda: wide(switch_ids))
        return stream.end_capture(), stream


def replay_ms(graph, stream) -> float:
    return round(1e3 * replays_seconds(cp, graph, stream, 8, repeats), 4)


report = {"model": path, "width": width, "context_tokens": n}
plain = plain_graph(lambda: wide(plain_ids))
conditional = conditional_graph()
try:
    switch = switch_graph()
except RuntimeError as err:
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
