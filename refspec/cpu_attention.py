"""The CPU backend's compiled attention: the bits of refspec.spec.attention (SPEC.md, "Attention", "exp",
"Reductions"), one query row and head at a time over the positions that row sees, the (row, head) pairs spread
over numba's threads.

spec.attention runs every row over all pos0 + R positions, the hidden ones as s = -inf (e = +0.0), in arrays
[D, R, H, T]; a 64-row prompt pass of an 8B model spends most of its non-GEMV time there. Here each (row, head)
runs over positions 0 .. p only (p = pos0 + r), which SPEC.md allows: the hidden positions' +0.0 terms change
no lane, no chunk and the max. Every other step is the spec's, in its order, one binary32 operation at a time
(numba compiles without fastmath: no reassociation, no FMA):

    s[t] = lane_sum_j(q[j] * k[t, j]) * scale;  m = max_t s[t];  e[t] = exp(s[t] - m)
    o[j] = chunked_sum_t(e[t] * v[t, j]) / chunked_sum_t(e[t])

lane_sum: lane l starts at +0.0 and adds elements l, l+32, ... in order, then the lanes are added 16, 8, 4, 2,
1 apart; chunked_sum: lane sums of 256-position chunks added in order to +0.0. exp is refspec's polynomial
(`_exp`, the twin of spec.exp)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refspec import spec
from refspec.cpu_gemv import CACHE, numba_threads
from refspec.errors import UsageError

LANES = spec.LANES
CHUNK = spec.ATTN_CHUNK
_C = spec.EXP_POLY  # 1/7!, ..., 1/0! as binary32
_LOG2E, _LN2_HI, _LN2_LO, _ROUND = spec.EXP_LOG2E, spec.EXP_LN2_HI, spec.EXP_LN2_LO, spec.EXP_ROUND
_X_MAX, _X_MIN = spec.EXP_X_MAX, spec.EXP_X_MIN
_POW2K = np.array([2.0**k for k in range(-126, 128)], np.float32)  # 2**k exactly, k = -126 .. 127


@njit(inline="always")
def _exp(x):
    """spec.exp of one binary32 value: NaN stays NaN, above 88 +inf, below -87 +0.0."""
    if x != x or x > _X_MAX:
        return x if x != x else np.float32(np.inf)
    if x < _X_MIN:
        return np.float32(0.0)
    k = (x * _LOG2E + _ROUND) - _ROUND
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = r * _C[0] + _C[1]
    p = p * r + _C[2]
    p = p * r + _C[3]
    p = p * r + _C[4]
    p = p * r + _C[5]
    p = p * r + _C[6]
    p = p * r + _C[7]
    return p * _POW2K[np.int32(k) + 126]


@njit(inline="always")
def _halving(lanes, width_of_row):
    """lanes [32, n]: row 0 becomes the sum of the 32 rows, added 16, 8, 4, 2, 1 apart (per column)."""
    width = LANES // 2
    while width >= 1:
        for i in range(width):
            for j in range(width_of_row):
                lanes[i, j] += lanes[i + width, j]
        width //= 2


@njit(inline="always")
def _attend(q, k_cache, v_cache, r, h, pos0, scale, out, s, lane, acc, num):
    """out[r, h]: query row r (position pos0 + r), head h, over positions 0 .. pos0 + r; s, lane, acc, num
    are scratch ([>= n], [32], [32, D], [D])."""
    dim = q.shape[2]
    g = h // (q.shape[1] // k_cache.shape[0])
    n = pos0 + r + 1  # positions this row sees
    # scores: lane_sum over j of q[j] * k[t, j], then * scale
    for t in range(n):
        lane[:] = 0
        for c in range(0, dim, LANES):
            for i in range(min(LANES, dim - c)):
                lane[i] += q[r, h, c + i] * k_cache[g, t, c + i]
        width = LANES // 2
        while width >= 1:
            for i in range(width):
                lane[i] += lane[i + width]
            width //= 2
        s[t] = lane[0] * scale
    m = s[0]  # the max; NaN if any score is NaN (as NumPy's max)
    for t in range(1, n):
        if s[t] > m or s[t] != s[t]:
            m = s[t]
            if m != m:
                break
    for t in range(n):
        s[t] = _exp(s[t] - m)
    # chunked sums over t of e[t] (denominator) and e[t] * v[t, j] (numerator)
    denom = np.float32(0.0)
    num[:] = 0
    for c0 in range(0, n, CHUNK):
        c1 = min(n, c0 + CHUNK)
        lane[:] = 0
        acc[:, :] = 0
        for t in range(c0, c1):
            i = (t - c0) % LANES
            lane[i] += s[t]
            for j in range(dim):
                acc[i, j] += s[t] * v_cache[g, t, j]
        width = LANES // 2
        while width >= 1:
            for i in range(width):
                lane[i] += lane[i + width]
            width //= 2
        _halving(acc, dim)
        denom += lane[0]
        for j in range(dim):
            num[j] += acc[0, j]
    for j in range(dim):
        out[r, h, j] = num[j] / denom


@njit(nogil=True, parallel=True, cache=CACHE)
def _attention_parallel(q, k_cache, v_cache, pos0, scale, out):
    """Every (row, head) pair, spread over numba's threads."""
    rows, n_head, dim = q.shape
    for i in prange(rows * n_head):
        s = np.empty(pos0 + rows, np.float32)
        lane = np.empty(LANES, np.float32)
        acc = np.empty((LANES, dim), np.float32)
        num = np.empty(dim, np.float32)
        _attend(q, k_cache, v_cache, i // n_head, i % n_head, pos0, scale, out, s, lane, acc, num)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int) -> np.ndarray:
    """spec.attention's bits: q [R, H, D]; k_cache, v_cache [G, T, D] with positions 0 .. pos0+R-1 written."""
    q = np.ascontiguousarray(q, np.float32)
    rows, n_head, dim = q.shape
    if k_cache.shape[1] < pos0 + rows or v_cache.shape != k_cache.shape or k_cache.shape[2] != dim \
            or n_head % k_cache.shape[0]:
        raise UsageError(f"attention: q {q.shape} does not fit the cache {k_cache.shape} at position {pos0}")
    scale = np.float32(1) / np.sqrt(np.float32(dim))  # as spec.attention
    out = np.empty(q.shape, np.float32)
    with numba_threads():  # the (row, head) pairs over numba's threads, as many as the GEMV last used
        _attention_parallel(q, k_cache, v_cache, int(pos0), scale, out)
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) the attention loops."""
    cache = np.zeros((1, 1, 1), np.float32)
    attention(np.zeros((1, 1, 1), np.float32), cache, cache, 0)
