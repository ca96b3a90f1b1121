"""The CPU backend's compiled small operations: the bits of their refspec.spec twins (SPEC.md, "Activation
quantization", "RMSNorm", "Elementwise", "RoPE", "exp", "Reductions"), each row in one compiled loop instead of
a dozen NumPy calls over the whole array (a decoding step of the default model spent ~25 ms of its ~60 in them).

Every float step is one IEEE binary32 operation in the spec's order: numba compiles without fastmath (no
reassociation, no FMA contraction; tests/test_cpu_ops.py checks the bits and the machine code), with NumPy's
error model (x / 0 is inf or NaN, as IEEE says, where numba's default raises ZeroDivisionError), and every
constant is a float32 (a Python float literal would make numba compute in float64). The exceptions are the
spec's own: the quantizer rounds |v| + 0.5 in float64 as spec.quantize_q8_0 does (exact for |v| < 2**52), and
the fp16 scales are rounded by NumPy outside the loops (float32 -> float16, the spec's `.astype`).

    quantize:  amax = max |x| over the block; d = amax / 127; inv = d == 0 ? 0 : 1 / d; v = x * inv;
               q = v finite ? sign(v) * floor(|v| + 0.5) : 0
    rmsnorm:   y = (x * (1 / sqrt(lane_sum(x * x) / n + eps))) * w
    silu_mul:  (g / (1 + exp(-g))) * u
    rope:      a' = a * c - b * s;  b' = a * s + b * c   (adjacent pairs, or NeoX halves)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from refspec.cpu_attention import _exp
from refspec.cpu_gemv import CACHE, numba_threads
from refspec.errors import UsageError
from refspec.model import QK8_0
from refspec.spec import LANES

_ZERO, _ONE, _127 = np.float32(0), np.float32(1), np.float32(127)


# ------------------------------------------------------------------------------------- per-row pieces
@njit(inline="always", error_model="numpy")
def _quantize_row(y, q, d):
    """One row y float32 [K] -> quants q int8 [K] and scales d float32 [K/32] (before fp16 rounding)."""
    for b in range(y.shape[0] // QK8_0):
        at = b * QK8_0
        amax = _ZERO
        for j in range(QK8_0):  # the max is exact in any order; NaN sticks, as NumPy's max
            a = abs(y[at + j])
            if a > amax or a != a:
                amax = a
                if a != a:
                    break
        scale = amax / _127
        inv = _ZERO if scale == _ZERO else _ONE / scale
        d[b] = scale
        for j in range(QK8_0):
            v = y[at + j] * inv
            if v - v != _ZERO:  # inf or NaN
                q[at + j] = 0
            else:
                r = math.floor(np.float64(abs(v)) + 0.5)  # round half away from zero, as the spec (float64)
                q[at + j] = np.int8(r if v >= _ZERO else -r)


@njit(inline="always", error_model="numpy")
def _lane_sum_of_squares(x, lanes):
    """lane_sum(x * x) of one row: lane l adds x[l]^2, x[l+32]^2, ... from +0.0; then the halving tree."""
    lanes[:] = _ZERO
    for i in range(x.shape[0]):
        lanes[i % LANES] += x[i] * x[i]
    width = LANES // 2
    while width >= 1:
        for i in range(width):
            lanes[i] += lanes[i + width]
        width //= 2
    return lanes[0]


@njit(inline="always", error_model="numpy")
def _rmsnorm_row(x, w, eps, y, lanes):
    n = x.shape[0]
    mean = _lane_sum_of_squares(x, lanes) / np.float32(n)
    inv = _ONE / np.sqrt(mean + eps)
    for i in range(n):
        y[i] = (x[i] * inv) * w[i]


@njit(inline="always", error_model="numpy")
def _silu_mul_row(g, u, y):
    for i in range(g.shape[0]):
        y[i] = (g[i] / (_ONE + _exp(-g[i]))) * u[i]


# ------------------------------------------------------------------------------------- compiled loops
@njit(nogil=True, cache=CACHE, error_model="numpy")
def _quantize(x):
    rows, k = x.shape
    q = np.empty((rows, k), np.int8)
    d = np.empty((rows, k // QK8_0), np.float32)
    for r in range(rows):
        _quantize_row(x[r], q[r], d[r])
    return q, d


@njit(nogil=True, cache=CACHE, error_model="numpy")
def _rmsnorm(x, w, eps):
    y = np.empty(x.shape, np.float32)
    lanes = np.empty(LANES, np.float32)
    for r in range(x.shape[0]):
        _rmsnorm_row(x[r], w, eps, y[r], lanes)
    return y


@njit(nogil=True, cache=CACHE, error_model="numpy")
def _rmsnorm_q8(x, w, eps):
    rows, k = x.shape
    q = np.empty((rows, k), np.int8)
    d = np.empty((rows, k // QK8_0), np.float32)
    y = np.empty(k, np.float32)
    lanes = np.empty(LANES, np.float32)
    for r in range(rows):
        _rmsnorm_row(x[r], w, eps, y, lanes)
        _quantize_row(y, q[r], d[r])
    return q, d


@njit(nogil=True, cache=CACHE, error_model="numpy")
def _silu_mul(g, u):
    y = np.empty(g.shape, np.float32)
    for r in range(g.shape[0]):
        _silu_mul_row(g[r], u[r], y[r])
    return y


@njit(nogil=True, cache=CACHE, error_model="numpy")
def _silu_mul_q8(g, u):
    rows, k = g.shape
    q = np.empty((rows, k), np.int8)
    d = np.empty((rows, k // QK8_0), np.float32)
    y = np.empty(k, np.float32)
    for r in range(rows):
        _silu_mul_row(g[r], u[r], y)
        _quantize_row(y, q[r], d[r])
    return q, d


@njit(nogil=True, parallel=True, cache=CACHE, error_model="numpy")
def _silu_mul_q8_rows(g, u):
    """_silu_mul_q8 with the rows spread over numba's threads (a prompt's feed-forward is 64 x 14336 values
    for an 8B model: each exp is a dozen dependent binary32 steps)."""
    rows, k = g.shape
    q = np.empty((rows, k), np.int8)
    d = np.empty((rows, k // QK8_0), np.float32)
    for r in prange(rows):
        y = np.empty(k, np.float32)
        _silu_mul_row(g[r], u[r], y)
        _quantize_row(y, q[r], d[r])
    return q, d


@njit(nogil=True, cache=CACHE, error_model="numpy")
def _rope(x, pos0, cos, sin, neox, out):
    """out[r, h] = x[r, h] rotated for position pos0 + r (dimensions at and past n_rot copied)."""
    rows, heads, dim = x.shape
    half = cos.shape[1]
    for r in range(rows):
        p = pos0 + r
        for h in range(heads):
            for i in range(2 * half, dim):
                out[r, h, i] = x[r, h, i]
            for i in range(half):
                ia, ib = (i, i + half) if neox else (2 * i, 2 * i + 1)
                a, b = x[r, h, ia], x[r, h, ib]
                c, s = cos[p, i], sin[p, i]
                out[r, h, ia] = a * c - b * s
                out[r, h, ib] = a * s + b * c


@njit(nogil=True, cache=CACHE, error_model="numpy")
def _rope_kv(q, k, v, k_cache, v_cache, pos0, cos, sin, neox):
    """Rotated q (returned); rotated k and v written to the caches [G, T, D] at positions pos0 ..."""
    q_out = np.empty(q.shape, np.float32)
    _rope(q, pos0, cos, sin, neox, q_out)
    k_rot = np.empty(k.shape, np.float32)
    _rope(k, pos0, cos, sin, neox, k_rot)
    for r in range(k.shape[0]):
        for g in range(k.shape[1]):
            for j in range(k.shape[2]):
                k_cache[g, pos0 + r, j] = k_rot[r, g, j]
                v_cache[g, pos0 + r, j] = v[r, g, j]
    return q_out


# ------------------------------------------------------------------------------------ Python wrappers
def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _rows_of_blocks(x: np.ndarray, what: str) -> np.ndarray:
    x = _f32(x)
    if x.ndim != 2 or x.shape[1] % QK8_0:
        raise UsageError(f"{what}: rows [R, K] with K a multiple of {QK8_0} expected, not {x.shape}")
    return x


def quantize_q8_0(x) -> tuple[np.ndarray, np.ndarray]:
    """spec.quantize_q8_0: float32 [R, K] -> int8 [R, K], float16 [R, K/32]."""
    q, d = _quantize(_rows_of_blocks(x, "quantize_q8_0"))
    with np.errstate(over="ignore"):  # fp16(d) overflows to inf, as the spec's
        return q, d.astype(np.float16)


def rmsnorm(x, w, eps) -> np.ndarray:
    """spec.rmsnorm over the last axis of x [..., n] (any leading shape)."""
    x, w = _f32(x), _f32(w)
    if w.shape != x.shape[-1:]:
        raise UsageError(f"rmsnorm: weights {w.shape} do not fit {x.shape}")
    return _rmsnorm(x.reshape(-1, x.shape[-1]), w, np.float32(eps)).reshape(x.shape)


def rmsnorm_q8(x, w, eps) -> tuple[np.ndarray, np.ndarray]:
    """spec.quantize_q8_0(spec.rmsnorm(x, w, eps)) for rows x [R, E]."""
    x, w = _rows_of_blocks(x, "rmsnorm_q8"), _f32(w)
    if w.shape != x.shape[-1:]:
        raise UsageError(f"rmsnorm_q8: weights {w.shape} do not fit {x.shape}")
    q, d = _rmsnorm_q8(x, w, np.float32(eps))
    with np.errstate(over="ignore"):
        return q, d.astype(np.float16)


def _gate_up(gate, up, what: str):
    gate, up = _f32(gate), _f32(up)
    if gate.shape != up.shape or gate.ndim != 2:
        raise UsageError(f"{what}: gate {gate.shape} and up {up.shape} must be rows of one shape")
    return gate, up


def silu_mul(gate, up) -> np.ndarray:
    """spec.silu_mul for rows [R, F]."""
    return _silu_mul(*_gate_up(gate, up, "silu_mul"))


def silu_mul_q8(gate, up) -> tuple[np.ndarray, np.ndarray]:
    """spec.quantize_q8_0(spec.silu_mul(gate, up)) for rows [R, F]."""
    gate, up = _gate_up(gate, up, "silu_mul_q8")
    if gate.shape[1] % QK8_0:
        raise UsageError(f"silu_mul_q8: rows of {gate.shape[1]} values are not blocks of {QK8_0}")
    if gate.shape[0] > 1:
        with numba_threads():  # the rows over numba's threads, as many as the GEMV last used
            q, d = _silu_mul_q8_rows(gate, up)
    else:
        q, d = _silu_mul_q8(gate, up)
    with np.errstate(over="ignore"):
        return q, d.astype(np.float16)


def _check_rope(x, pos0, cos, sin):
    if x.ndim != 3 or cos.shape != sin.shape or cos.ndim != 2 or 2 * cos.shape[1] > x.shape[2] \
            or not 0 <= pos0 <= cos.shape[0] - x.shape[0]:
        raise UsageError(f"rope: x {x.shape} at position {pos0} does not fit the table {cos.shape}")


def rope(x, pos0: int, cos, sin, neox: bool) -> np.ndarray:
    """spec.rope: x [R, H, D] rotated for positions pos0 .. pos0+R-1."""
    x, cos, sin = _f32(x), _f32(cos), _f32(sin)
    _check_rope(x, int(pos0), cos, sin)
    out = np.empty(x.shape, np.float32)
    _rope(x, int(pos0), cos, sin, bool(neox), out)
    return out


def rope_kv(q, k, v, k_cache, v_cache, pos0: int, cos, sin, neox: bool) -> np.ndarray:
    """FusedFromParts.rope_kv's bits: rotate q and k, store rotated k and v in the caches [G, T, D] at rows
    pos0 ..; return the rotated q."""
    q, k, v, cos, sin = _f32(q), _f32(k), _f32(v), _f32(cos), _f32(sin)
    pos0 = int(pos0)
    _check_rope(q, pos0, cos, sin)
    _check_rope(k, pos0, cos, sin)
    if v.shape != k.shape or k_cache.shape != v_cache.shape or k_cache.dtype != np.float32 \
            or v_cache.dtype != np.float32 or k_cache.shape[0] != k.shape[1] or k_cache.shape[2] != k.shape[2] \
            or pos0 + k.shape[0] > k_cache.shape[1]:
        raise UsageError(f"rope_kv: k {k.shape}, v {v.shape} do not fit the caches {k_cache.shape} at {pos0}")
    return _rope_kv(q, k, v, k_cache, v_cache, pos0, cos, sin, bool(neox))


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops for the array layouts a forward pass gives them: rows
    of one or more, and views of a stacked GEMV's output (C-contiguous for one row, strided for more)."""
    for rows in (1, 2):
        x = np.zeros((rows, QK8_0), np.float32)
        w = np.ones(QK8_0, np.float32)
        quantize_q8_0(x)
        rmsnorm(x, w, 1e-5)
        rmsnorm_q8(x, w, 1e-5)
        stacked = np.zeros((rows, 4 * QK8_0), np.float32)  # as gate and up, or q, k and v, come out
        gate, up = stacked[:, :QK8_0], stacked[:, QK8_0 : 2 * QK8_0]
        silu_mul_q8(gate, up)
        silu_mul(gate, up)
        q, k, v = (stacked[:, i * 2 * 4 : (i + 1) * 2 * 4].reshape(rows, 2, 4) for i in range(3))
        table = np.zeros((rows, 1), np.float32)
        cache = np.zeros((2, rows, 4), np.float32)
        rope_kv(q, k, v, cache, cache.copy(), 0, table, table, False)
        rope(q, 0, table, table, True)
