"""Backends: where the operations of refspec/spec.py run. The CPU backend *is* the spec (it calls
refspec.spec, with a faster but bit-identical GEMV); the GPU backend (refspec/gpu.py) runs the kernels of
kernels_raw/. Both offer the same methods, which is all refspec/forward.py uses."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from refspec import spec
from refspec.errors import DeviceError, UsageError
from refspec.model import QK8_0, LayerWeights, ModelWeights, Q8Matrix

F32 = np.float32


class CpuQ8:
    """A Q8Matrix laid out for the CPU GEMV: quants block-major, int8 [nb, N, 32], and the scales as
    float32 [nb, N] (fp16 -> fp32 is exact)."""

    def __init__(self, w: Q8Matrix):
        n, k = w.q.shape
        self.n, self.nb = n, k // QK8_0
        self.qb = np.ascontiguousarray(w.q.reshape(n, self.nb, QK8_0).transpose(1, 0, 2))
        self.d_t = np.ascontiguousarray(w.d.astype(F32).T)
        self.source = w  # embedding lookups read the original rows


class CpuBackend:
    """NumPy on the CPU: every operation is its refspec.spec twin. The GEMV computes the exact int8 block
    dot products with BLAS in binary32, converting the weights a slab at a time (small enough to stay in
    cache), then spec.scale_and_reduce_f32 applies the scales in the canonical order."""

    name = "cpu"
    SLAB_BYTES = 1 << 20  # float32 weight bytes converted per BLAS call: stays in a core's L2 cache

    def __init__(self, threads: int | None = None):
        self.threads = max(1, min(os.cpu_count() or 1, 8) if threads is None else threads)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    # ---- memory
    def asarray(self, a):
        return np.asarray(a)

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape):
        return np.zeros(shape, F32)

    def synchronize(self):
        pass

    def upload_weights(self, weights: ModelWeights) -> ModelWeights:
        prepared = {}

        def prep(w: Q8Matrix) -> CpuQ8:
            if id(w) not in prepared:  # a tied head shares the embedding's copy
                prepared[id(w)] = CpuQ8(w)
            return prepared[id(w)]

        layers = [
            LayerWeights(**{f: prep(v) if isinstance(v, Q8Matrix) else v for f, v in vars(lw).items()})
            for lw in weights.layers
        ]
        return ModelWeights(prep(weights.tok_embd), layers, weights.output_norm, prep(weights.output))

    # ---- operations (each is its spec twin)
    add = staticmethod(spec.add)
    rmsnorm = staticmethod(spec.rmsnorm)
    rope = staticmethod(spec.rope)
    attention = staticmethod(spec.attention)
    silu_mul = staticmethod(spec.silu_mul)
    quantize_q8 = staticmethod(spec.quantize_q8_0)
    argmax = staticmethod(spec.argmax)

    @staticmethod
    def embed(w: CpuQ8, ids):
        return spec.embed(w.source, ids)

    @staticmethod
    def rmsnorm_q8(x, w, eps):
        return spec.quantize_q8_0(spec.rmsnorm(x, w, eps))

    @staticmethod
    def kv_write(k_cache, v_cache, k, v, pos0):
        rows = k.shape[0]
        k_cache[:, pos0 : pos0 + rows] = k.transpose(1, 0, 2)  # [R, G, D] -> [G, R, D]
        v_cache[:, pos0 : pos0 + rows] = v.transpose(1, 0, 2)

    def q8_gemv(self, w: CpuQ8, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
        rows = xq.shape[0]
        x = xq.reshape(rows, w.nb, QK8_0).transpose(1, 2, 0).astype(F32)  # [nb, 32, R]
        dots = np.empty((w.nb, w.n, rows), F32)
        n_step = max(1, min(w.n, self.SLAB_BYTES // (4 * QK8_0)))
        b_step = max(1, self.SLAB_BYTES // (4 * QK8_0 * n_step))
        slabs = [(b, n) for n in range(0, w.n, n_step) for b in range(0, w.nb, b_step)]

        def run(part):
            for b, n in part:
                wf = w.qb[b : b + b_step, n : n + n_step].astype(F32)  # [b', n', 32]
                np.matmul(wf, x[b : b + b_step], out=dots[b : b + b_step, n : n + n_step])

        if self._pool is None or len(slabs) < 2:
            run(slabs)
        else:  # NumPy releases the GIL in astype and matmul: one contiguous share of slabs per thread
            share = -(-len(slabs) // self.threads)
            list(self._pool.map(run, [slabs[i : i + share] for i in range(0, len(slabs), share)]))
        return spec.scale_and_reduce_f32(dots.transpose(0, 2, 1), w.d_t, xd)  # [nb, R, N] -> [R, N]


def make_backend(device: str = "auto"):
    """'cpu', 'gpu', or 'auto' (the GPU when CuPy sees one, else the CPU)."""
    if device == "cpu":
        return CpuBackend()
    if device not in ("gpu", "auto"):
        raise UsageError(f"unknown device {device!r}: choose auto, cpu or gpu")
    try:
        from refspec.gpu import GpuBackend, gpu_available
    except ImportError as err:  # refspec.gpu itself imports CuPy lazily; this is a packaging problem
        if device == "gpu":
            raise DeviceError(f"the GPU backend cannot be imported: {err}") from err
        return CpuBackend()
    if gpu_available():
        return GpuBackend()
    if device == "gpu":
        raise DeviceError("no GPU found: install CuPy (pip install 'refspec[cuda]' or '[rocm]') or use --device cpu")
    return CpuBackend()
