"""Conditional nodes in a captured pass (NVIDIA, CUDA 12.4+ drivers): a chained pass runs the body its live-row
count asks for.

A chained verify pass is captured with draft_max + 1 rows, and its kernels compute only the rows the step before
it asked for (GpuBackend.live_rows); still, an 8-row pass that guesses nothing costs more than a one-row pass
(its GEMVs' groups hold 4 weight rows, the tensor-core head computes all rows), and a pass queued past a run's
end launches every kernel to compute nothing. With conditional graph nodes the captured pass begins with a
one-thread kernel (kernels_raw/graph_conditions.hip) that reads the count and sets two conditions; an IF node on
each runs its body: the one-row pass for a count of 1, the pass of all rows for more, neither for 0. Both
bodies are the same forward pass (refspec/forward.py) run for one row or for all: row 0's operations, and so its
bits, are the same in both (the spec's ops do not depend on the batch).

Measured on the default model (H200, 2026-12-02 10:50 UTC; tests/probe_conditional.py, tests/results/
probe_conditional_default_h200.json), an 8-row pass at 0 / 1 / 8 live rows: plain 0.347 / 0.668 / 0.765 ms, two IF
nodes 0.008 / 0.664 / 0.778, one SWITCH node (CUDA 12.8+ drivers; bodies: none, one row, all rows) 0.005 / 0.656 /
0.771 (a one-row pass: 0.646). So the SWITCH node is taken where the driver has it, the IF nodes before; `ngram` on
the copy prompts went from 1.99x greedy (plain) to 2.06x. Greedy steps stay one body: a step past the run's end
comes once a run, and the nodes would cost every step more than that saves.

CuPy 14 has no API for conditional nodes, so this calls the driver through ctypes, as refspec/gpu_launch.py
does: during CuPy's stream capture it adds the nodes to the graph being captured (cuStreamGetCaptureInfo,
cuGraphConditionalHandleCreate, cuGraphAddNode, cuStreamUpdateCaptureDependencies) and captures each body into
its node's graph on a stream of its own (cuStreamBeginCaptureToGraph). Entry points are taken at CUDA 12.4's
ABI (cuGetProcAddress); a driver without them, or HIP, gets None from `conditional_capture` and the passes
captured as before.
"""
from __future__ import annotations

import ctypes

from refspec.errors import DeviceError
from refspec.gpu_launch import error_name

ABI_VERSION = 12040  # the CUDA version whose signatures the entry points below are taken with
SWITCH_VERSION = 12080  # the first driver with SWITCH nodes
CU_GRAPH_NODE_TYPE_CONDITIONAL = 13
CU_GRAPH_COND_TYPE_IF = 0
CU_GRAPH_COND_TYPE_SWITCH = 2  # CUDA 12.8+ drivers
CU_STREAM_SET_CAPTURE_DEPENDENCIES = 1
CU_STREAM_CAPTURE_MODE_RELAXED = 2
_P, _U64, _SIZE = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t


class _ConditionalParams(ctypes.Structure):  # CUDA_CONDITIONAL_NODE_PARAMS (graphs_out: set by the driver)
    _fields_ = [("handle", _U64), ("type", ctypes.c_int), ("size", ctypes.c_uint), ("graphs_out", _P), ("ctx", _P)]


class _NodeParams(ctypes.Structure):  # CUgraphNodeParams: type, 3 ints, a union of 29 long longs, a long long
    _fields_ = [("type", ctypes.c_int), ("reserved0", ctypes.c_int * 3), ("conditional", _ConditionalParams),
                ("union_rest", ctypes.c_char * (29 * 8 - ctypes.sizeof(_ConditionalParams))),
                ("reserved2", ctypes.c_longlong)]


class ConditionalCapture:
    """Conditional nodes (IF, SWITCH) in the graph a CuPy stream is capturing, their bodies captured from Python
    callables."""

    def __init__(self, cp, libcuda):
        self.cp, self._cuda = cp, libcuda
        pointer = ctypes.POINTER
        self._capture_info = self._entry("cuStreamGetCaptureInfo", _P, pointer(ctypes.c_int), pointer(_U64),
                                         pointer(_P), pointer(_P), pointer(_P), pointer(_SIZE))
        self._add_node = self._entry("cuGraphAddNode", pointer(_P), _P, _P, _P, _SIZE, pointer(_NodeParams))
        self._update = self._entry("cuStreamUpdateCaptureDependencies", _P, pointer(_P), _P, _SIZE, ctypes.c_uint)
        self._begin_to_graph = self._entry("cuStreamBeginCaptureToGraph", _P, _P, _P, _P, _SIZE, ctypes.c_int)
        self._end = self._entry("cuStreamEndCapture", _P, pointer(_P))
        self._new_handle = self._entry("cuGraphConditionalHandleCreate", pointer(_U64), _P, _P, ctypes.c_uint,
                                       ctypes.c_uint)
        self._context = self._entry("cuCtxGetCurrent", pointer(_P))
        # one SWITCH node where the driver has them, else two IF nodes (GpuGraphs' chained passes)
        self.switch = switch_supported(libcuda)

    def _entry(self, name: str, *argtypes):
        fn, found = _P(), ctypes.c_int()
        status = self._cuda.cuGetProcAddress_v2(name.encode(), ctypes.byref(fn), ABI_VERSION, _U64(0),
                                                ctypes.byref(found))
        if status or not fn.value:
            raise DeviceError(f"the CUDA driver has no {name} of CUDA {ABI_VERSION // 1000}.{ABI_VERSION % 100 // 10}")
        return ctypes.CFUNCTYPE(ctypes.c_int, *argtypes)(fn.value)

    def _check(self, status: int, what: str) -> None:
        if status:
            raise DeviceError(f"{what} failed ({error_name(self._cuda.cuGetErrorName, status)}): a conditional "
                              "graph node; run with --no-graphs")

    def _graph(self, stream):
        """(graph, its current dependency nodes, how many) of the capture on `stream`."""
        status, ident, graph, deps, edges, count = ctypes.c_int(), _U64(), _P(), _P(), _P(), _SIZE()
        self._check(self._capture_info(_P(stream.ptr), ctypes.byref(status), ctypes.byref(ident),
                                       ctypes.byref(graph), ctypes.byref(deps), ctypes.byref(edges),
                                       ctypes.byref(count)), "cuStreamGetCaptureInfo")
        if not graph.value:
            raise DeviceError("conditional nodes need a stream being captured")
        return graph, deps, count

    def handles(self, stream, count: int) -> list[int]:
        """`count` new condition handles of the graph `stream` is capturing (each 0 at every launch until set)."""
        graph = self._graph(stream)[0]
        ctx = _P()
        self._check(self._context(ctypes.byref(ctx)), "cuCtxGetCurrent")
        out = []
        for _ in range(count):
            handle = _U64()
            self._check(self._new_handle(ctypes.byref(handle), graph, ctx, 0, 0), "cuGraphConditionalHandleCreate")
            out.append(handle.value)
        return out

    def if_node(self, stream, handle: int, body) -> None:
        """An IF node on `handle` after everything captured so far on `stream` (what is captured next comes
        after it), running what body() launches."""
        self._node(stream, handle, CU_GRAPH_COND_TYPE_IF, [body])

    def switch_node(self, stream, handle: int, bodies: list) -> None:
        """A SWITCH node on `handle` (CUDA 12.8+ drivers: an older one refuses it here) after everything captured
        so far on `stream`: a value v < len(bodies) runs what bodies[v]() launches (None: nothing), any other
        value nothing."""
        self._node(stream, handle, CU_GRAPH_COND_TYPE_SWITCH, bodies)

    def _node(self, stream, handle: int, kind: int, bodies: list) -> None:
        graph, deps, count = self._graph(stream)
        ctx = _P()
        self._check(self._context(ctypes.byref(ctx)), "cuCtxGetCurrent")
        params = _NodeParams(type=CU_GRAPH_NODE_TYPE_CONDITIONAL)
        params.conditional = _ConditionalParams(handle=handle, type=kind, size=len(bodies), ctx=ctx)
        node = _P()
        self._check(self._add_node(ctypes.byref(node), graph, deps, None, count, ctypes.byref(params)),
                    "cuGraphAddNode (a conditional node)")
        graphs = ctypes.cast(params.conditional.graphs_out, ctypes.POINTER(_P))  # the driver's array of bodies
        self._check(self._update(_P(stream.ptr), ctypes.byref(node), None, _SIZE(1),
                                 CU_STREAM_SET_CAPTURE_DEPENDENCIES), "cuStreamUpdateCaptureDependencies")
        for i, body in enumerate(bodies):
            if body is not None:
                self._capture_body(graphs[i], body)

    def _capture_body(self, graph, body) -> None:
        """What body() launches, captured into `graph` (a conditional node's body) on a stream of its own."""
        side = self.cp.cuda.Stream(non_blocking=True)
        self._check(self._begin_to_graph(_P(side.ptr), _P(graph), None, None, _SIZE(0),
                                         CU_STREAM_CAPTURE_MODE_RELAXED), "cuStreamBeginCaptureToGraph")
        try:
            with side:
                body()
        finally:
            done = _P()
            self._check(self._end(_P(side.ptr), ctypes.byref(done)), "cuStreamEndCapture (a conditional body)")


def switch_supported(libcuda) -> bool:
    """Whether the driver (cuDriverGetVersion) is CUDA 12.8 or newer, the first with SWITCH nodes."""
    version = ctypes.c_int()
    return libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value >= SWITCH_VERSION


def conditional_capture(cp, platform: str):
    """A ConditionalCapture where the driver offers conditional nodes (NVIDIA, CUDA 12.4+), else None."""
    if platform != "cuda":
        return None
    try:
        return ConditionalCapture(cp, ctypes.CDLL("libcuda.so.1"))
    except (OSError, AttributeError, DeviceError):
        return None
