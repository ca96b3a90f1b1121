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
