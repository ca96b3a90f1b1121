"""refspec/gpu_conditional.py without a GPU: the driver structures it passes have cuda.h's layout, and a
platform or driver without conditional nodes gets None (the passes are then captured as one body). Its use on
the GPU is tested in tests/test_gpu_graphs.py (test_conditional_passes_equal_plain_ones)."""
from __future__ import annotations

import ctypes

import pytest

from refspec import gpu_conditional
from refspec.errors import DeviceError
from refspec.gpu_conditional import _ConditionalParams, _NodeParams, conditional_capture


def test_node_parameters_have_the_drivers_layout():
    """CUgraphNodeParams is 256 bytes: the node type, 3 reserved ints, then a union of 29 long longs holding
    CUDA_CONDITIONAL_NODE_PARAMS (handle, type, size, the bodies' array the driver sets, the context), then a
    reserved long long."""
    assert ctypes.sizeof(_NodeParams) == 256
    assert _NodeParams.conditional.offset == 16
    assert _NodeParams.reserved2.offset == 16 + 29 * 8
    assert [(f, getattr(_ConditionalParams, f).offset) for f, _ in _ConditionalParams._fields_] == [
        ("handle", 0), ("type", 8), ("size", 12), ("graphs_out", 16), ("ctx", 24)]
    assert ctypes.sizeof(_ConditionalParams) == 32


def test_no_conditional_nodes_off_cuda_or_without_the_driver(monkeypatch):
    assert conditional_capture(None, "hip") is None

    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(gpu_conditional.ctypes, "CDLL", no_driver)
    assert conditional_capture(None, "cuda") is None


def test_a_driver_without_the_entry_points_gets_none(monkeypatch):
    """cuGetProcAddress finding nothing (a driver older than CUDA 12.4): ConditionalCapture refuses, naming the
    entry point, and conditional_capture gives None, not an error."""

    class OldDriver:
        @staticmethod
        def cuGetProcAddress_v2(name, fn, version, flags, found):
            return 500  # CUDA_ERROR_NOT_FOUND

    with pytest.raises(DeviceError, match="cuStreamGetCaptureInfo"):
        gpu_conditional.ConditionalCapture(None, OldDriver())
    monkeypatch.setattr(gpu_conditional.ctypes, "CDLL", lambda name: OldDriver())
    assert conditional_capture(None, "cuda") is None


class _FakeDriver:
    """Stands for the driver's entry points: records each call; the conditional node's bodies are graphs 101.."""

    def __init__(self):
        self.calls = []

    def capture_info(self, stream, status, ident, graph, deps, edges, count):
        graph._obj.value, deps._obj.value, count._obj.value = 7, 8, 1
        self.calls.append(("info", stream.value))
        return 0

    def context(self, ctx):
        ctx._obj.value = 9
        return 0

    def add_node(self, node, graph, deps, edges, count, params):
        c = params._obj.conditional
        self.bodies = (ctypes.c_void_p * c.size)(*range(101, 101 + c.size))
        c.graphs_out = ctypes.cast(self.bodies, ctypes.c_void_p)
        node._obj.value = 5
        self.calls.append(("node", graph.value, deps.value, count.value, c.handle, c.type, c.size, c.ctx))
        return 0

    def update(self, stream, node, edges, count, flags):
        self.calls.append(("update", stream.value, node._obj.value, count.value, flags))
        return 0

    def begin(self, stream, graph, deps, edges, count, mode):
        self.calls.append(("begin", graph.value))
        return 0

    def end(self, stream, graph):
        self.calls.append(("end",))
        return 0


class _FakeStream:
    def __init__(self, non_blocking=False, ptr=3):
        self.ptr = ptr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_capture():
    fake = _FakeDriver()
    cond = gpu_conditional.ConditionalCapture.__new__(gpu_conditional.ConditionalCapture)
    cond.cp = type("cp", (), {"cuda": type("cuda", (), {"Stream": _FakeStream})})
    cond._cuda = None
    cond._capture_info, cond._context, cond._add_node = fake.capture_info, fake.context, fake.add_node
    cond._update, cond._begin_to_graph, cond._end = fake.update, fake.begin, fake.end
    return cond, fake


def test_if_and_switch_nodes_are_added_after_the_capture_and_their_bodies_captured_into_them():
    """The node goes after the capture's current nodes (graph, dependencies and count from
    cuStreamGetCaptureInfo), with the handle, its type (IF 0, SWITCH 2), one body a callable and the context;
    the capture then continues after it; each body with a callable is captured into the graph the driver gave
    for it, in order, and None leaves its body empty."""
    cond, fake = _fake_capture()
    ran = []
    cond.if_node(_FakeStream(ptr=3), 77, lambda: ran.append("if"))
    assert fake.calls == [("info", 3), ("node", 7, 8, 1, 77, 0, 1, 9), ("update", 3, 5, 1, 1), ("begin", 101),
                          ("end",)]
    fake.calls.clear()
    cond.switch_node(_FakeStream(ptr=4), 78, [None, lambda: ran.append("one"), lambda: ran.append("all")])
    assert fake.calls == [("info", 4), ("node", 7, 8, 1, 78, 2, 3, 9), ("update", 4, 5, 1, 1), ("begin", 102),
                          ("end",), ("begin", 103), ("end",)]
    assert ran == ["if", "one", "all"]


def test_a_body_that_raises_still_ends_its_capture():
    cond, fake = _fake_capture()

    def broken():
        raise ValueError("a launch failed")

    with pytest.raises(ValueError):
        cond.if_node(_FakeStream(), 1, broken)
    assert fake.calls[-2:] == [("begin", 101), ("end",)]


def test_switch_nodes_from_cuda_12_8_drivers():
    """Chained passes take one SWITCH node where cuDriverGetVersion says 12.8 or newer, else two IF nodes."""

    class Driver:
        def __init__(self, version, status=0):
            self.version, self.status = version, status

        def cuDriverGetVersion(self, out):
            out._obj.value = self.version
            return self.status

    assert gpu_conditional.switch_supported(Driver(12080))
    assert gpu_conditional.switch_supported(Driver(13000))
    assert not gpu_conditional.switch_supported(Driver(12060))
    assert not gpu_conditional.switch_supported(Driver(13000, status=3))  # the call failed: IF nodes


def test_a_failing_driver_call_is_one_refspec_error_naming_the_call_and_the_error():
    """A driver call that fails during the capture raises DeviceError (one `refspec: error:` line) with the call,
    the driver's name for the error (gpu_launch.error_name, shared with overlapped launches), or its number
    where the driver knows no name, and what to do."""

    class Driver:
        @staticmethod
        def cuGetErrorName(status, name):
            name._obj.value = b"CUDA_ERROR_INVALID_VALUE" if status == 1 else None
            return 0 if status == 1 else 100

    cond, _ = _fake_capture()
    cond._cuda = Driver()
    cond._context = lambda ctx: 1
    with pytest.raises(DeviceError, match=r"^cuCtxGetCurrent failed \(CUDA_ERROR_INVALID_VALUE\): a conditional "
                                          r"graph node; run with --no-graphs$"):
        cond.handles(_FakeStream(), 1)
    cond._context = lambda ctx: 999
    with pytest.raises(DeviceError, match=r"^cuCtxGetCurrent failed \(CUDA error 999\)"):
        cond.handles(_FakeStream(), 1)
