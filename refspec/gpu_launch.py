"""Kernel launches that overlap the boundary between kernels: CUDA's programmatic dependent launch.

In a stream, a kernel normally starts only when the kernel before it has finished: its blocks are
scheduled, its first loads go out, while the GPU drains the other's last blocks and then idles. A decode
pass is a chain of ~10 kernels a layer, many of them small, so those gaps are a large part of its time.
Launched with the attribute PROGRAMMATIC_STREAM_SERIALIZATION (NVIDIA sm_90 and newer), a kernel may start
as soon as every block of the kernel before it has started and called griddepcontrol.launch_dependents.
Each kernel of kernels_raw/ begins with rs_kernel_begin() (portable.h), which first waits for all earlier
work to finish and be visible, then lets the next kernel start; before it, a kernel only reads what no
kernel writes (the GEMV loads its first weight blocks). So the order of every read and write is
the same as without the attribute, and no bit can change; only scheduling does.

CuPy's kernel call cannot set launch attributes, so this calls the driver's cuLaunchKernelEx through
ctypes, with the kernel handle CuPy loaded and the arguments packed as CuPy packs them. Stream capture
records such launches like any other, with programmatic edges in the graph (refspec/gpu_graphs.py).
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from refspec.errors import DeviceError

CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # cuda.h, CUlaunchAttributeID
CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1  # cuda.h, CUfunction_attribute: the kernel's static shared memory
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9  # percent of the L1/shared memory given to shared


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_mem", ctypes.c_uint),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_LaunchAttribute)),
        ("num_attrs", ctypes.c_uint),
    ]


def _driver_function(name: str, what: str):
    """The CUDA driver's function `name` (through ctypes; `what` it is needed for, for the error)."""
    try:
        return getattr(_driver(), name)
    except (OSError, AttributeError) as err:
        raise DeviceError(f"the CUDA driver has no {name} (needed for {what}): {err}") from err


def error_name(get_error_name, status: int) -> str:
    """The driver's name for error `status` (through its cuGetErrorName, `get_error_name`), or "CUDA error N"
    where it knows none."""
    name = ctypes.c_char_p()
    get_error_name(status, ctypes.byref(name))
    return (name.value or b"CUDA error %d" % status).decode()


@functools.cache
def _driver():
    return ctypes.CDLL("libcuda.so.1")


def _dims(d) -> tuple[int, int, int]:
    d = tuple(int(x) for x in d) if isinstance(d, tuple) else (int(d),)
    return d + (1,) * (3 - len(d))


class DependentLaunch:
    """Launches CuPy-loaded kernels (cupy.cuda.function.Function) with programmatic dependent launch on
    CuPy's current stream: `launch(fn, grid, block, args, shared_mem)`, arguments as Function.__call__
    takes them (CuPy arrays pass their device pointer; NumPy scalars their bytes; int as int64, float as
    float64, None as a null pointer)."""

    def __init__(self, cupy):
        self.cp = cupy
        self._launch = _driver_function("cuLaunchKernelEx", "overlapped launches")
        self._launch.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._launch.restype = ctypes.c_int
        self._error_name = _driver_function("cuGetErrorName", "overlapped launches")
        self._error_name.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        self._attr = _LaunchAttribute(id=CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
        self._attr.value[0] = 1  # programmaticStreamSerializationAllowed

    def _argument(self, a):
        if a is None:
            return ctypes.c_uint64(0)
        if isinstance(a, self.cp.ndarray):
            return ctypes.c_uint64(a.data.ptr)
        if isinstance(a, int):  # bool too, as CuPy does
            a = np.int64(a)
        elif isinstance(a, float):
            a = np.float64(a)
        if not isinstance(a, np.generic):
            raise DeviceError(f"a kernel argument of type {type(a).__name__} cannot be passed")
        return (ctypes.c_char * a.itemsize).from_buffer_copy(a.tobytes())

    def launch(self, fn, grid, block, args, shared_mem: int = 0) -> None:
        values = [self._argument(a) for a in args]
        params = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        config = _LaunchConfig(
            grid=(ctypes.c_uint * 3)(*_dims(grid)),
            block=(ctypes.c_uint * 3)(*_dims(block)),
            shared_mem=int(shared_mem),
            stream=self.cp.cuda.get_current_stream().ptr,
            attrs=ctypes.pointer(self._attr),
            num_attrs=1,
        )
        status = self._launch(ctypes.byref(config), fn.ptr, params, None)
        if status:
            raise DeviceError(f"kernel launch failed: {error_name(self._error_name, status)}")


class Kernel:
    """A loaded kernel, called as CuPy's Function is: kernel(grid, block, args, shared_mem=0); through the
    backend's DependentLaunch when it has one (GpuBackend.overlap), else through CuPy."""

    def __init__(self, fn, backend):
        self.fn, self.backend = fn, backend
        # the kernel's static shared memory in bytes (__shared__ variables), as the driver reports it
        try:
            self.static_shared = int(backend.cp.cuda.driver.funcGetAttribute(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                                                                               fn.ptr))
        except Exception as err:  # a driver that cannot say: no launch should guess
            raise DeviceError(f"the driver could not report a kernel's shared memory ({err})") from err
        # dynamic shared memory any launch may ask without opting in: 48 KiB a block, less the kernel's own
        self.shared_allowed = 48 * 1024 - self.static_shared
        self._resident: dict[tuple[int, int], int] = {}

    def resident_blocks(self, threads: int, shared: int) -> int:
        """How many blocks of `threads` threads and `shared` bytes of dynamic shared memory one multiprocessor
        holds at once (the driver's occupancy calculator; at least 1). CUDA only."""
        key = (threads, shared)
        if key not in self._resident:
            occupancy = _driver_function("cuOccupancyMaxActiveBlocksPerMultiprocessor", "the tensor-core GEMV's grid")
            occupancy.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
            occupancy.restype = ctypes.c_int
            count = ctypes.c_int(0)
            status = occupancy(ctypes.byref(count), self.fn.ptr, threads, shared)
            if status != 0:
                raise DeviceError(f"the CUDA driver could not compute a kernel's occupancy (error {status})")
            self._resident[key] = max(1, count.value)
        return self._resident[key]

    def shared_limit(self) -> int:
        """The most dynamic shared memory a launch of this kernel may opt in to on this GPU."""
        limit = self.backend.cp.cuda.Device().attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)
        return limit - self.static_shared

    def allow_shared(self, nbytes: int) -> None:
        """Let launches ask for `nbytes` of dynamic shared memory (above 48 KiB a kernel must opt in). Such a
        kernel also asks for the most shared memory a multiprocessor can give (a carveout of 100 %), so that
        as many of its blocks fit on one as their shared memory allows (two of q8_gemv_mma's 104 KiB at 16 rows)."""
        if nbytes <= self.shared_allowed:
            return
        cp = self.backend.cp
        if nbytes > self.shared_limit():
            raise DeviceError(f"a kernel needs {nbytes} + {self.static_shared} bytes of shared memory; this GPU "
                              f"grants {self.shared_limit() + self.static_shared}")
        cp.cuda.driver.funcSetAttribute(self.fn.ptr, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)
        cp.cuda.driver.funcSetAttribute(self.fn.ptr, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
        self.shared_allowed = nbytes

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        launcher = self.backend._launcher
        if launcher is None:
            self.fn(grid, block, args, shared_mem=shared_mem)
        else:
            launcher.launch(self.fn, grid, block, args, shared_mem)
