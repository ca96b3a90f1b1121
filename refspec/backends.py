"""Backends: where the operations of refspec/spec.py run. The CPU backend *is* the spec (it calls
refspec.spec, with a faster but bit-identical GEMV); the GPU backend (refspec/gpu.py) runs the kernels of
kernels_raw/. Both offer the same methods, which is all refspec/forward.py uses: refspec/protocol.py lists them
(the `Backend` protocol), and `refspec check-backend` checks a foreign backend against the spec with them."""
from __future__ import annotations

import math

import numpy as np

from refspec import spec
from refspec.errors import DeviceError, UsageError
from refspec.model import QK8_0, LayerWeights, ModelWeights, MtpWeights, Q8Matrix

F32 = np.float32


class CpuQ8:
    """Q8Matrices laid out for the CPU GEMV, stacked along N when several read the same input (Q, K, V;
    gate, up): quants block-major [nb, N, 32], as float32 (`wf`, when the backend keeps them resident) or
    int8 (`qb`, converted a slab at a time), and the scales as float32 [nb, N]. fp16 -> fp32 and int8 ->
    fp32 are exact, and stacking rows changes no row's bits."""

    def __init__(self, ws: list[Q8Matrix], resident: bool):
        q = np.concatenate([w.q for w in ws]) if len(ws) > 1 else ws[0].q
        d = np.concatenate([w.d for w in ws]) if len(ws) > 1 else ws[0].d
        n, k = q.shape
        self.n, self.nb = n, k // QK8_0
        qb = q.reshape(n, self.nb, QK8_0).transpose(1, 0, 2)
        self.wf = qb.astype(F32, order="C") if resident else None
        self.qb = None if resident else np.ascontiguousarray(qb)
        self.d_t = np.ascontiguousarray(d.astype(F32).T)
        bounds = np.cumsum([0] + [w.q.shape[0] for w in ws])
        self.parts = [CpuQ8Part(self, int(a), int(b), w) for a, b, w in zip(bounds, bounds[1:], ws)]


class CpuQ8Part:
    """Rows start..stop-1 of a CpuQ8 stack: one of the model's matrices."""

    def __init__(self, stack: CpuQ8, start: int, stop: int, source: Q8Matrix):
        self.stack, self.start, self.stop = stack, start, stop
        self.source = source  # embedding lookups read the original rows


class FusedFromParts:
    """The fused operations refspec/forward.py calls, composed of the basic ones: these compositions are
    what a backend's fused kernels must reproduce bit for bit (the GPU's: kernels_raw/rope.hip rope_kv,
    attention.hip with quantization, quantize_q8_0.hip silu_mul_q8, q8_gemv.hip's epilogue). A backend that
    implements only the basic operations (refspec/protocol.py) inherits these and runs forward.py as is."""

    def pass_input(self, ids, pos0: int):
        """The token ids and the first position as the operations take them (the GPU sends both in one
        copy to device memory)."""
        return np.asarray(ids, dtype=np.int64), int(pos0)

    def rope_kv(self, q, k, v, k_cache, v_cache, pos0, cos, sin, neox):
        """Rotate q and k; store the rotated k and v in the cache at pos0 ..; return the rotated q."""
        self.kv_write(k_cache, v_cache, self.rope(k, pos0, cos, sin, neox), v, pos0)
        return self.rope(q, pos0, cos, sin, neox)

    def attention_q8(self, q, k_cache, v_cache, pos0):
        """Attention's output rows [R, H*D], quantized."""
        a = self.attention(q, k_cache, v_cache, pos0)  # [R, H, D]
        return self.quantize_q8(a.reshape(a.shape[0], -1))

    def silu_mul_q8(self, gate, up):
        return self.quantize_q8(self.silu_mul(gate, up))

    def q8_gemv_add(self, x, w, xq, xd):
        """x + w @ (xq, xd): the residual add."""
        return self.add(x, self.q8_gemv(w, xq, xd))


class CpuBackend(FusedFromParts):
    """NumPy on the CPU: every operation is its refspec.spec twin. The GEMV computes the exact int8 block
    dot products with BLAS in binary32 (exact: integers below 2**24), then spec.scale_and_reduce_f32
    applies the scales and sums the blocks in the canonical order. Weights are kept as float32 when they fit
    in RESIDENT_BYTES (fastest: one pass over memory), else converted from int8 a slab at a time."""

    name = "cpu"
    RESIDENT_BYTES = 4 << 30  # float32 copies of the quants up to this size (the default model needs 0.5 GB)
    SLAB_BYTES = 1 << 20  # float32 weight bytes converted per BLAS call otherwise: stays in a core's L2

    def __init__(self):
        self._buffers = [np.empty(0, F32), np.empty(0, F32)]

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
        groups = [[w] for w in _distinct([weights.tok_embd, weights.output]
                                         + ([weights.mtp.embed, weights.mtp.head] if weights.mtp else []))]
        for lw in weights.layers:
            groups += [g for g in matrix_groups(lw) if g[0] is not None]
        if weights.mtp:
            groups.append([weights.mtp.eh_proj])
        resident = 4 * sum(w.q.size for group in groups for w in group) <= self.RESIDENT_BYTES
        parts = {id(part.source): part for group in groups for part in CpuQ8(group, resident).parts}

        def prep(value):
            return parts[id(value)] if isinstance(value, Q8Matrix) else value

        layers = [LayerWeights(**{f: prep(v) for f, v in vars(lw).items()}) for lw in weights.layers]
        mtp = MtpWeights(**{f: prep(v) for f, v in vars(weights.mtp).items()}) if weights.mtp else None
        return ModelWeights(prep(weights.tok_embd), layers, weights.output_norm, prep(weights.output), mtp=mtp)

    # ---- operations (each is its spec twin)
    add = staticmethod(spec.add)
    rmsnorm = staticmethod(spec.rmsnorm)
    rope = staticmethod(spec.rope)
    attention = staticmethod(spec.attention)
    silu_mul = staticmethod(spec.silu_mul)
    quantize_q8 = staticmethod(spec.quantize_q8_0)
    argmax = staticmethod(spec.argmax)
    argmax_rows = staticmethod(spec.argmax_rows)

    @staticmethod
    def embed(w: CpuQ8Part, ids):
        return spec.embed(w.source, ids)

    @staticmethod
    def rmsnorm_q8(x, w, eps):
        return spec.quantize_q8_0(spec.rmsnorm(x, w, eps))

    # ---- qwen35: gated attention and Gated DeltaNet (spec twins; the rings are KVCache's state slots)
    silu = staticmethod(spec.silu)
    l2norm = staticmethod(spec.l2norm)
    sigmoid_gate = staticmethod(spec.sigmoid_gate)
    gated_rmsnorm = staticmethod(spec.gated_rmsnorm)
    deltanet_gates = staticmethod(spec.deltanet_gates)

    @staticmethod
    def stack(rows):
        return np.stack(rows)

    @staticmethod
    def concat(a, b):
        return np.concatenate([a, b], axis=-1)

    @staticmethod
    def split_query_gate(qg, n_head, head_dim):
        """[R, H*2*D] (per head: D query values, then D gate values) -> queries, gates [R, H, D]."""
        qg = qg.reshape(qg.shape[0], n_head, 2, head_dim)
        return np.ascontiguousarray(qg[:, :, 0]), np.ascontiguousarray(qg[:, :, 1])

    @staticmethod
    def split_qkv(qkv, n_k_heads, n_v_heads, dim):
        """[R, conv_dim] -> q, k [R, Hk, Dk], v [R, Hv, Dv] (the conv's channels: all q, all k, all v)."""
        rows, key_dim = qkv.shape[0], n_k_heads * dim
        return (qkv[:, :key_dim].reshape(rows, n_k_heads, dim), qkv[:, key_dim : 2 * key_dim].reshape(rows, n_k_heads, dim),
                qkv[:, 2 * key_dim :].reshape(rows, n_v_heads, dim))

    @staticmethod
    def conv1d_causal(x, w, ring, read, writes):
        """spec.conv1d_causal from the state in ring[read] (zeros if None); row r's state goes to
        ring[writes[r]] (in row order, so a slot written twice keeps the later row's)."""
        state = ring[read] if read is not None else np.zeros(ring.shape[1:], F32)
        y, windows = spec.conv1d_causal(x, state, w)
        for r, slot in enumerate(writes):
            ring[slot] = windows[r]
        return y

    @staticmethod
    def delta_rule(q, k, v, decay, beta, ring, read, writes):
        """spec.delta_rule from the state in ring[read] (zeros if None); row r's state goes to ring[writes[r]]."""
        s = ring[read] if read is not None else np.zeros(ring.shape[1:], F32)
        out = np.empty(v.shape, F32)
        for r, slot in enumerate(writes):
            out[r], s = spec.delta_rule_step(q[r], k[r], v[r], decay[r], beta[r], s)
            ring[slot] = s
        return out

    @staticmethod
    def kv_write(k_cache, v_cache, k, v, pos0):
        rows = k.shape[0]
        k_cache[:, pos0 : pos0 + rows] = k.transpose(1, 0, 2)  # [R, G, D] -> [G, R, D]
        v_cache[:, pos0 : pos0 + rows] = v.transpose(1, 0, 2)

    def q8_gemv(self, w: CpuQ8Part, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
        return self.q8_gemv_many([w], xq, xd)[0]

    def q8_gemv_many(self, ws: list[CpuQ8Part], xq: np.ndarray, xd: np.ndarray) -> list[np.ndarray]:
        """GEMVs of several matrices over the same activation rows -> [R, N_i] each; matrices uploaded as
        one stack (Q, K, V; gate, up) take one pass over the stack."""
        stack = ws[0].stack
        if [id(w) for w in ws] == [id(p) for p in stack.parts]:
            y = self._gemv(stack, xq, xd)
            return [y[:, w.start : w.stop] for w in ws]
        return [self._gemv(w.stack, xq, xd)[:, w.start : w.stop] for w in ws]

    def _gemv(self, w: CpuQ8, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
        rows = xq.shape[0]
        x = xq.reshape(rows, w.nb, QK8_0).transpose(1, 0, 2).astype(F32, order="C")  # [nb, R, 32]
        dots, terms = (self._scratch(i, (w.nb, rows, w.n)) for i in (0, 1))
        if w.wf is not None:  # [nb, R, 32] @ [nb, 32, N] -> [nb, R, N], exact integers
            np.matmul(x, w.wf.transpose(0, 2, 1), out=dots)
        else:
            n_step = max(1, min(w.n, self.SLAB_BYTES // (4 * QK8_0)))
            b_step = max(1, self.SLAB_BYTES // (4 * QK8_0 * n_step))
            for n in range(0, w.n, n_step):
                for b in range(0, w.nb, b_step):
                    wf = w.qb[b : b + b_step, n : n + n_step].astype(F32)  # [b', n', 32]
                    np.matmul(x[b : b + b_step], wf.transpose(0, 2, 1), out=dots[b : b + b_step, :, n : n + n_step])
        return spec.scale_and_reduce_f32(dots, w.d_t, xd, out=terms)  # [nb, R, N] -> [R, N]

    def _scratch(self, slot: int, shape: tuple) -> np.ndarray:
        """A reused float32 array of `shape` (two slots): fresh large arrays cost page faults every call."""
        size = math.prod(shape)
        if len(self._buffers[slot]) < size:
            self._buffers[slot] = np.empty(size, F32)
        return self._buffers[slot][:size].reshape(shape)


def matrix_groups(lw: LayerWeights) -> list[list]:
    """A layer's matrices, grouped by the input they read (a group's first entry is None when the layer
    does not have it): one stacked GEMV per group."""
    return [[lw.wq, lw.wk, lw.wv], [lw.wo], [lw.w_gate, lw.w_up], [lw.w_down],
            [lw.w_qkv, lw.w_z, lw.w_beta, lw.w_alpha], [lw.ssm_out]]


def _distinct(items: list) -> list:
    """items without repeats (by identity), in order: a tied head is the embedding itself."""
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def _q8_matrices(weights: ModelWeights):
    yield weights.tok_embd
    yield weights.output
    for lw in weights.layers:
        yield from (v for v in vars(lw).values() if isinstance(v, Q8Matrix))


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
