"""Backends: where the operations of refspec/spec.py run. The CPU backend *is* the spec (it calls
refspec.spec, with compiled but bit-identical twins of the GEMV, attention and the per-row operations); the GPU
backend (refspec/gpu.py) runs the kernels of kernels_raw/. Both offer the same methods, which is all refspec/forward.py uses: refspec/protocol.py lists them
(the `Backend` protocol), and `refspec check-backend` checks a foreign backend against the spec with them."""
from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

from refspec import checks, cpu_attention, cpu_gemv, cpu_ops, spec
from refspec.errors import DeviceError, UsageError
from refspec.model import Q8_0_BLOCK, QK8_0, LayerWeights, ModelWeights, MtpWeights, Q8Matrix
from refspec.progress import ByteProgress, larger_than_memory

F32 = np.float32
BLOCK_BYTES = Q8_0_BLOCK.itemsize  # 34: an fp16 scale, then 32 int8 quants


class CpuQ8:
    """Q8Matrices laid out for the CPU GEMV, stacked along N when several read the same input (Q, K, V;
    gate, up); stacking rows changes no row's bits. Two layouts, chosen by the backend:

    * resident: the quants block-major [nb, N, 32] as float32 (`wf`) and the scales as float32 [nb, N]
      (`d_t`), for BLAS, at 4.25x the file's bytes;
    * streamed (`wf` is None): each matrix's own GGUF rows of 34-byte blocks (`rows`, int8 [N_i, nb*34],
      normally views of the memory-mapped file: no copy at all), read by the compiled GEMV
      (refspec/cpu_gemv.py).

    fp16 -> fp32 and int8 -> fp32 are exact, so both give the same dots."""

    def __init__(self, ws: list[Q8Matrix], resident: bool):
        n_rows = [w.shape[0] for w in ws]
        self.n, self.nb = sum(n_rows), ws[0].shape[1] // QK8_0
        bounds = np.cumsum([0] + n_rows)
        self.parts = [CpuQ8Part(self, int(a), int(b), w) for a, b, w in zip(bounds, bounds[1:], ws)]
        self.wf = self.d_t = None
        if resident:
            q = np.concatenate([w.q_blocks for w in ws]) if len(ws) > 1 else ws[0].q_blocks  # [N, nb, 32]
            d = np.concatenate([w.d for w in ws]) if len(ws) > 1 else ws[0].d
            self.wf = q.transpose(1, 0, 2).astype(F32, order="C")
            self.d_t = np.ascontiguousarray(d.astype(F32).T)
        else:
            self.rows = [_block_rows(w) for w in ws]
        self.nbytes = sum(w.nbytes for w in ws)


def _block_rows(w: Q8Matrix) -> np.ndarray:
    """A matrix's GGUF rows as int8 [N, nb*34]: a view of its blocks (a packed copy if it was built split)."""
    blocks = w.blocks
    if blocks is None:
        blocks = np.empty(w.d.shape, Q8_0_BLOCK)
        blocks["d"], blocks["q"] = w.d, w.q_blocks
    elif not blocks.flags.c_contiguous:
        blocks = np.ascontiguousarray(blocks)
    return blocks.view(np.int8).reshape(blocks.shape[0], -1)


class CpuQ8Part:
    """Rows start..stop-1 of a CpuQ8 stack: one of the model's matrices."""

    def __init__(self, stack: CpuQ8, start: int, stop: int, source: Q8Matrix):
        self.stack, self.start, self.stop = stack, start, stop
        self.source = source  # embedding lookups read the original rows


class FusedFromParts:
    """The fused operations refspec/forward.py calls, composed of the basic ones: these compositions are
    what a backend's fused kernels must reproduce bit for bit (the GPU's: kernels_raw/rope.hip rope_kv,
    attention.hip with quantization, quantize_q8_0.hip silu_mul_q8, q8_gemv.hip's epilogue, deltanet.hip's
conv1d with silu, delta rule with its gates, gated RMSNorm and the attention's output gate with
quantization). A backend that
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

    def q8_gemv_many_bias(self, ws, biases, xq, xd):
        """q8_gemv_many, each output plus its bias repeated over the rows (qwen2's Q, K, V)."""
        return [self.add(y, b) for y, b in zip(self.q8_gemv_many(ws, xq, xd), biases)]

    def conv1d_silu(self, x, w, ring, pos0):
        """silu of the DeltaNet conv1d's output (qwen35)."""
        return self.silu(self.conv1d_causal(x, w, ring, pos0))

    def gated_delta_rule(self, q, k, v, alpha, b, dt_bias, a, ring, pos0):
        """The delta rule with its gates computed from the alpha and beta projections (qwen35)."""
        return self.delta_rule(q, k, v, *self.deltanet_gates(alpha, b, dt_bias, a), ring, pos0)

    def sigmoid_gate_q8(self, a, gate):
        """The gated attention's output a * sigmoid(gate) [R, H, D], quantized as rows [R, H*D] (qwen35)."""
        y = self.sigmoid_gate(a, gate)
        return self.quantize_q8(y.reshape(y.shape[0], -1))

    def gated_rmsnorm_q8(self, x, w, z, eps):
        """DeltaNet's gated RMSNorm [R, Hv, Dv], quantized as rows [R, Hv*Dv] for the output projection."""
        y = self.gated_rmsnorm(x, w, z, eps)
        return self.quantize_q8(y.reshape(y.shape[0], -1))


class CpuBackend(FusedFromParts):
    """NumPy on the CPU: every operation is its refspec.spec twin; the GEMV, attention and the per-row
    operations (quantization, RMSNorm, silu_mul, RoPE: refspec/cpu_ops.py) compiled with the same bits. The
    GEMV reads the weights' GGUF blocks where they lie (the memory-mapped file) with the compiled loops of
    refspec/cpu_gemv.py (integer SIMD dots, the spec's float steps), the output columns split over the cores
    by numba's threads; models larger than the machine's memory then stream from disk on every pass, and say
    so on stderr. With resident_bytes > 0, models whose quants fit in that many bytes as float32 are copied so and
    run through BLAS in binary32 instead (exact: integers below 2**24), spec.scale_and_reduce_f32 applying the
    scales and the canonical block order: the earlier path, slower (the default model: ~1.6x) and 4.25x the
    memory, kept as an independent check of the compiled one."""

    name = "cpu"
    RESIDENT_BYTES = 0  # float32 copies of the quants up to this size for BLAS (0: every model compiled)
    TASK_WORK = 1 << 19  # weight bytes times rows per column range of a streamed GEMV (several per core)
    PROGRESS_SECONDS = 10.0  # between progress lines while weights stream from disk

    def __init__(self, *, threads: int | None = None, resident_bytes: int | None = None, log=None):
        """threads: for the streamed GEMV (default: every core; at most numba's NUMBA_NUM_THREADS);
        resident_bytes: the largest float32 copy of the quants to keep for BLAS (default RESIDENT_BYTES: none);
        log: where progress lines go (default stderr)."""
        if threads is not None:
            threads = checks.integer("threads", threads, 1)
        if resident_bytes is not None:
            resident_bytes = checks.integer("resident_bytes", resident_bytes, 0)
        if log is not None:
            checks.callback("log", log)
        self.threads = threads or os.cpu_count() or 1
        self.resident_bytes = self.RESIDENT_BYTES if resident_bytes is None else resident_bytes
        self._local = threading.local()
        self._bounds = {}  # column ranges per GEMV shape
        for name, parts, compiled in self.COMPILED_FUSED:
            own = getattr(type(self), name) is getattr(CpuBackend, name)  # a subclass's own fused kernel stays
            if own and all(getattr(type(self), part) is getattr(CpuBackend, part) for part in parts):
                setattr(self, name, compiled)
        self._log = log or _print_to_stderr
        self._stream = None  # ByteProgress when the weights are larger than memory

    @property
    def running_threads(self) -> int:
        """The threads its parallel loops run: `threads`, at most numba's (NUMBA_NUM_THREADS)."""
        return min(self.threads, cpu_gemv.max_threads())

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
        values = sum(w.shape[0] * w.shape[1] for group in groups for w in group)
        resident = 4 * values <= self.resident_bytes
        stacks = [CpuQ8(group, resident) for group in groups]
        parts = {id(part.source): part for stack in stacks for part in stack.parts}
        pass_bytes = sum(stack.nbytes for stack in stacks) - (  # the embedding is looked up, not read
            weights.tok_embd.nbytes if weights.output is not weights.tok_embd else 0)
        if not resident and larger_than_memory(pass_bytes):
            self._stream = ByteProgress(pass_bytes, "forward passes read the weights from disk", self._log,
                                        self.PROGRESS_SECONDS)

        def prep(value):
            return parts[id(value)] if isinstance(value, Q8Matrix) else value

        layers = [LayerWeights(**{f: prep(v) for f, v in vars(lw).items()}) for lw in weights.layers]
        mtp = MtpWeights(**{f: prep(v) for f, v in vars(weights.mtp).items()}) if weights.mtp else None
        return ModelWeights(prep(weights.tok_embd), layers, weights.output_norm, prep(weights.output), mtp=mtp)

    # ---- operations (each is its spec twin; the per-row ones compiled, refspec/cpu_ops.py)
    add = staticmethod(spec.add)
    rmsnorm = staticmethod(cpu_ops.rmsnorm)
    rope = staticmethod(cpu_ops.rope)
    attention = staticmethod(cpu_attention.attention)  # compiled, spec.attention's bits
    silu_mul = staticmethod(cpu_ops.silu_mul)
    quantize_q8 = staticmethod(cpu_ops.quantize_q8_0)
    argmax = staticmethod(spec.argmax)
    argmax_rows = staticmethod(spec.argmax_rows)
    # fused operations compiled as one loop each (refspec/cpu_ops.py), with the bits of their composition:
    # name, the parts it fuses, the compiled loop. __init__ binds them only where the parts are CpuBackend's
    # own: a subclass that replaces a part (a backend modelled on this one, differing in one op, as the tests
    # and notebooks build) gets the composition of its parts instead.
    COMPILED_FUSED = (("rmsnorm_q8", ("rmsnorm", "quantize_q8"), cpu_ops.rmsnorm_q8),
                      ("silu_mul_q8", ("silu_mul", "quantize_q8"), cpu_ops.silu_mul_q8),
                      ("rope_kv", ("rope", "kv_write"), cpu_ops.rope_kv))

    def rmsnorm_q8(self, x, w, eps):
        return self.quantize_q8(self.rmsnorm(x, w, eps))

    @staticmethod
    def embed(w: CpuQ8Part, ids):
        return spec.embed(w.source, ids)

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
    def conv1d_causal(x, w, ring, pos0):
        """spec.conv1d_causal for rows at positions pos0 ..: the state before them from the ring, each row's
        state into its slot (spec.ring_slots; in row order, so a slot written twice keeps the later row's)."""
        read, writes = spec.ring_slots(int(pos0), x.shape[0], ring.shape[0])
        state = ring[read] if read is not None else np.zeros(ring.shape[1:], F32)
        y, windows = spec.conv1d_causal(x, state, w)
        for r, slot in enumerate(writes):
            ring[slot] = windows[r]
        return y

    @staticmethod
    def delta_rule(q, k, v, decay, beta, ring, pos0):
        """spec.delta_rule for rows at positions pos0 .., the state before them from the ring, each row's
        state into its slot (spec.ring_slots)."""
        read, writes = spec.ring_slots(int(pos0), v.shape[0], ring.shape[0])
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
        if w.wf is None:
            return self._gemv_streamed(w, xq, xd)
        rows = xq.shape[0]
        x = xq.reshape(rows, w.nb, QK8_0).transpose(1, 0, 2).astype(F32, order="C")  # [nb, R, 32]
        dots, terms = (self._scratch(i, (w.nb, rows, w.n)) for i in (0, 1))
        np.matmul(x, w.wf.transpose(0, 2, 1), out=dots)  # [nb, R, 32] @ [nb, 32, N] -> [nb, R, N], exact
        return spec.scale_and_reduce_f32(dots, w.d_t, xd, out=terms)  # [nb, R, N] -> [R, N]

    # ---- the streamed GEMV
    def _gemv_streamed(self, w: CpuQ8, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
        """The compiled GEMV (refspec/cpu_gemv.py) over the stack's GGUF rows, each matrix's output columns
        in ranges that numba's threads take as they come free."""
        x = cpu_gemv.PreparedRows(xq, xd)
        y = np.empty((x.n_rows, w.n), F32)
        for part, qrows in zip(w.parts, w.rows):
            bounds = self._column_bounds(part.stop - part.start, w.nb, x.n_rows)
            cpu_gemv.gemv_tasks(qrows, x, y, part.start, bounds, self.threads)
        if self._stream is not None:
            self._stream.advance(w.nbytes)
        return y

    def _column_bounds(self, n: int, nb: int, rows: int) -> np.ndarray:
        """n output columns cut into ranges of about TASK_WORK weight bytes times rows (at least one column
        group or tile of the loop that runs them), as many as a multiple of the threads so that no core idles
        at the end; small ranges also even out cores that other work slows down. Cached per shape."""
        key = (n, nb, rows)
        bounds = self._bounds.get(key)
        if bounds is None:
            unit = cpu_gemv.COLUMN_GROUP if rows <= cpu_gemv.FEW_ROWS else cpu_gemv.TILE_COLUMNS
            work = nb * BLOCK_BYTES * max(1, rows)  # per column
            count = max(1, min(-(-n // unit), -(-n * work // self.TASK_WORK)))
            count = -(-count // self.threads) * self.threads
            step = -(-n // (count * unit)) * unit  # whole units
            bounds = self._bounds[key] = np.array(list(range(0, n, step)) + [n], np.int64)
        return bounds

    def _scratch(self, slot: int, shape: tuple) -> np.ndarray:
        """A reused float32 array of `shape` (three slots per thread): fresh large arrays cost page faults
        every call."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = [np.empty(0, F32) for _ in range(3)]
        size = math.prod(shape)
        if len(buffers[slot]) < size:
            buffers[slot] = np.empty(size, F32)
        return buffers[slot][:size].reshape(shape)


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def make_backend(device: str = "auto", *, threads: int | None = None):
    """'cpu', 'gpu', or 'auto' (the GPU when CuPy sees one, else the CPU). threads: the CPU backend's threads
    (default: every core); a GPU backend runs its passes on the GPU and has no use for them."""
    if threads is not None:
        threads = checks.integer("threads", threads, 1)
    if device == "cpu":
        return CpuBackend(threads=threads)
    if device not in ("gpu", "auto"):
        raise UsageError(f"unknown device {device!r}: choose auto, cpu or gpu")
    try:
        from refspec.gpu import GpuBackend, gpu_available
    except ImportError as err:  # refspec.gpu itself imports CuPy lazily; this is a packaging problem
        if device == "gpu":
            raise DeviceError(f"the GPU backend cannot be imported: {err}") from err
        return CpuBackend(threads=threads)
    if gpu_available():
        return GpuBackend()
    if device == "gpu":
        raise DeviceError("no GPU found: install CuPy (pip install 'refspec[cuda]' or '[rocm]') or use --device cpu")
    return CpuBackend(threads=threads)
