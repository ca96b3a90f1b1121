"""The executable specification of refspec's numerics, in NumPy.

Every function here is the definition of one operation: a fixed sequence of IEEE-754 binary32 operations
(+ - * / sqrt, exact conversions) whose order depends only on the operation's sizes, never on how many rows
are batched, a row's place in the batch, the backend, or a GPU's warp width. refspec/SPEC.md says the same in
prose; each GPU kernel in kernels_raw/ has the same stem as its twin here and must reproduce it bit for bit.

NumPy's own reductions (sum, dot, matmul) choose their order freely, so they are used only where the order
cannot matter: integer-valued block dot products that are exact in binary32 (|sum| < 2**24), and max.
"""
from __future__ import annotations

import numpy as np

from refspec.errors import NumericsError
from refspec.model import QK8_0
from refspec.rope import rope_table  # noqa: F401  (the RoPE table; SPEC.md, "RoPE")

SPEC_VERSION = "2"  # bumped whenever any operation's bits change; golden files record it (2: RoPE table
# entries correctly rounded from exact values, refspec/rope.py)
F32 = np.float32
LANES = 32  # reductions run over 32 lanes whatever the hardware (SPEC.md, "Reductions")
ATTN_CHUNK = 256  # positions per attention chunk (SPEC.md, "Attention")


# --------------------------------------------------------------------------------------------- reductions
def _lanes(axis: int, start: int, stop: int) -> tuple:
    """An index selecting positions start..stop-1 along `axis` (a non-negative axis number)."""
    return (slice(None),) * axis + (slice(start, stop),)


def _tree_steps(m: int, last: bool) -> list[tuple]:
    """The (destination, source) index pairs of the halving tree over m lanes (m <= 32), for lanes on the
    first axis or, when `last`, on the last axis."""
    steps, width = [], LANES // 2
    while width >= 1:
        if m > width:
            dst, src = slice(0, m - width), slice(width, m)
            steps.append(((Ellipsis, dst), (Ellipsis, src)) if last else (dst, src))
            m = width
        width //= 2
    return steps


_TREE_STEPS = {(m, last): _tree_steps(m, last) for m in range(1, LANES + 1) for last in (False, True)}


def _tree(acc: np.ndarray, axis: int) -> np.ndarray:
    """Lane values (m <= 32 along `axis`; lanes m..31 hold +0.0) -> their sum: add the upper half of the
    lanes onto the lower half, 16, 8, 4, 2, 1 apart. A lane without a partner keeps its value (v + 0.0 == v
    for v != -0.0), so absent lanes need no padding. Works in place on `acc`."""
    last = axis == acc.ndim - 1  # lanes last: index them behind an ellipsis (contiguous runs)
    lanes = acc if last or axis == 0 else np.moveaxis(acc, axis, 0)  # else a view with the lanes first
    for dst, src in _TREE_STEPS[lanes.shape[-1 if last else 0], last]:
        lanes[dst] += lanes[src]
    return lanes[(Ellipsis, 0) if last else 0]


def lane_sum(x: np.ndarray, axis: int = -1, *, overwrite: bool = False) -> np.ndarray:
    """Sum along `axis` in the canonical order (SPEC.md, "Reductions").

    Lane l (0..31) starts at +0.0 and adds elements l, l+32, l+64, ... in that order; then the 32 lane
    values are combined by `_tree`. With overwrite=True the lanes are accumulated inside `x` (a float32
    temporary of the caller's), which saves a copy.

    Shortcut, exact: the lanes here start from their first element instead of from +0.0. In round-to-nearest
    that changes no sum except the sign of a zero: a sum is -0.0 only when every addend is -0.0, and then
    the canonical sum (which starts at +0.0) is +0.0. The canonical result is never -0.0, so adding +0.0 to
    the result at the end restores exactly the canonical bits.
    """
    x = np.asarray(x, dtype=F32)
    axis = axis % x.ndim
    n = x.shape[axis]
    if n == 0:
        return np.zeros(x.shape[:axis] + x.shape[axis + 1 :], F32)
    if axis == x.ndim - 1 and n >= 4 * LANES:  # long rows: the lanes' running sums in one call
        acc = _lanes_by_accumulate(x)
    else:
        acc = x[_lanes(axis, 0, LANES)]
        if not overwrite:
            acc = acc.copy()
        for start in range(LANES, n, LANES):
            stop = min(n, start + LANES)
            acc[_lanes(axis, 0, stop - start)] += x[_lanes(axis, start, stop)]
    return _tree(acc, axis) + F32(0)


def _lanes_by_accumulate(x: np.ndarray) -> np.ndarray:
    """The 32 lane values of lane_sum over the last axis (each started from its first element), with
    np.add.accumulate (a running sum, strictly in order) over the chunks of 32."""
    n = x.shape[-1]
    full = n - n % LANES
    chunks = x[..., :full].reshape(x.shape[:-1] + (full // LANES, LANES))
    acc = np.add.accumulate(chunks, axis=-2)[..., -1, :]
    if full < n:
        acc[..., : n - full] += x[..., full:]
    return acc


def chunked_sum(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sum along `axis` (attention positions): lane_sum of each ATTN_CHUNK-long chunk, then the chunk sums
    added in order to +0.0. For n <= ATTN_CHUNK this equals lane_sum."""
    x = np.asarray(x, dtype=F32)
    axis = axis % x.ndim
    n = x.shape[axis]
    if n <= ATTN_CHUNK:
        return lane_sum(x, axis)
    total = np.zeros(x.shape[:axis] + x.shape[axis + 1 :], F32)
    for start in range(0, n, ATTN_CHUNK):
        total += lane_sum(x[_lanes(axis, start, start + ATTN_CHUNK)], axis)
    return total


# ---------------------------------------------------------------------------------------------------- exp
# exp(x) = 2**k * p(r), k = nearest integer to x*log2(e), r = x - k*ln2 (Cody-Waite, two constants),
# p = Taylor polynomial of degree 7 in Horner form. Every constant is defined by its binary32 bit pattern
# (SPEC.md, "exp"); the asserts below say what each one is.
def _f32(bits: int) -> np.float32:
    return np.array(bits, np.uint32).view(F32)[()]


EXP_LOG2E = _f32(0x3FB8AA3B)  # log2(e) rounded to binary32 = 1.44269502162933349609375
EXP_LN2_HI = _f32(0x3F318000)  # 0.693359375 = 355/512: k*EXP_LN2_HI is exact for |k| < 2**15
EXP_LN2_LO = _f32(0xB95E8083)  # ln(2) - 355/512 rounded to binary32 (about -2.1219444e-4)
EXP_ROUND = _f32(0x4B400000)  # 1.5 * 2**23: (t + 1.5*2**23) - 1.5*2**23 rounds t to an integer, ties to even
EXP_X_MAX = _f32(0x42B00000)  # 88.0: exp(x) = +inf above this
EXP_X_MIN = _f32(0xC2AE0000)  # -87.0: exp(x) = +0.0 below this (the result would come close to subnormal)
EXP_POLY = tuple(_f32(b) for b in (0x39500D01, 0x3AB60B61, 0x3C088889, 0x3D2AAAAB, 0x3E2AAAAB, 0x3F000000,
                                   0x3F800000, 0x3F800000))  # 1/7!, 1/6!, ..., 1/1!, 1/0! rounded to binary32
assert EXP_LOG2E == F32(1.4426950408889634) and EXP_LN2_HI == 355 / 512 and EXP_ROUND == 1.5 * 2**23
assert EXP_LN2_LO == F32(0.6931471805599453 - 355 / 512) and (EXP_X_MAX, EXP_X_MIN) == (88, -87)
assert EXP_POLY == tuple(F32(1.0 / f) for f in (5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0))


def exp(x: np.ndarray) -> np.ndarray:
    """refspec's exp in binary32 (SPEC.md, "exp"); NaN in, NaN out."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore"):  # NaN passes through every step below and stays NaN
        xc = np.clip(x, EXP_X_MIN, EXP_X_MAX)
        k = (xc * EXP_LOG2E + EXP_ROUND) - EXP_ROUND
        r = (xc - k * EXP_LN2_HI) - k * EXP_LN2_LO
        p = r * EXP_POLY[0] + EXP_POLY[1]
        for c in EXP_POLY[2:]:
            p *= r
            p += c
        scale = ((k.astype(np.int32) + 127) << 23).view(F32)  # 2**k, exact: k is in [-126, 127]
        p *= scale
    p[x > EXP_X_MAX] = np.inf
    p[x < EXP_X_MIN] = 0.0
    return p


# --------------------------------------------------------------------------------------------- elementwise
def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(g / (1 + exp(-g))) * u, elementwise."""
    gate = np.asarray(gate, F32)
    return (gate / (F32(1) + exp(-gate))) * np.asarray(up, F32)


def add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Residual add and bias add: x + y, elementwise (y broadcast over rows)."""
    return (np.asarray(x, F32) + np.asarray(y, F32)).astype(F32)


# ------------------------------------------------------------------------------------------------ rmsnorm
def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Over the last axis of x [..., n]: (x * (1 / sqrt(lane_sum(x*x) / n + eps))) * w."""
    x = np.asarray(x, F32)
    n = x.shape[-1]
    mean = lane_sum(x * x) / F32(n)  # [...]
    inv = F32(1) / np.sqrt(mean + F32(eps))
    return (x * inv[..., None]) * np.asarray(w, F32)


# ------------------------------------------------------------------------------------------ quantization
def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activation rows [R, K] -> (int8 quants [R, K], float16 scales [R, K/32]), byte-identical to ggml's
    reference Q8_0 quantizer (gguf.quants.quantize(x, Q8_0)).

    Per block of 32: d = amax / 127; inv = 0 if d == 0 else 1 / d; q = round-half-away-from-zero(x * inv),
    and q = 0 where x * inv is not finite (inv overflowed to +inf, or the block holds inf or NaN); the scale
    stored is fp16(d).
    """
    x = np.asarray(x, F32)
    rows, k = x.shape
    blocks = x.reshape(rows, k // QK8_0, QK8_0)
    d = np.abs(blocks).max(axis=-1) / F32(127)  # [R, nb]; max is exact in any order
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = np.where(d == 0, F32(0), F32(1) / d).astype(F32)
        scaled = blocks * inv[..., None]  # binary32, as ggml
        # round half away from zero: |v| + 0.5 and floor in float64, exact for |v| < 2**52 (here |v| <= 127)
        q = np.copysign(np.floor(np.abs(scaled, dtype=np.float64) + 0.5), scaled)
        if not np.isfinite(scaled).all():
            q[~np.isfinite(scaled)] = 0
        return q.astype(np.int8).reshape(rows, k), d.astype(np.float16)


# ------------------------------------------------------------------------------------------------- gemv
def block_dots(wq: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Exact integer dot products of every 32-block: wq int8 [N, K], xq int8 [R, K] -> float32 [nb, R, N].
    Each is an integer with |value| <= 128*127*32 < 2**24, so binary32 holds it exactly in any order."""
    n, k = wq.shape
    nb = k // QK8_0
    w = wq.reshape(n, nb, QK8_0).transpose(1, 2, 0).astype(F32, order="C")  # [nb, 32, N]
    x = xq.reshape(xq.shape[0], nb, QK8_0).transpose(1, 0, 2).astype(F32, order="C")  # [nb, R, 32]
    return np.matmul(x, w)


def scale_and_reduce(dots: np.ndarray, wd: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """dots [nb, R, N], wd f16 [N, nb], xd f16 [R, nb] -> [R, N]:
    lane_sum over blocks b of (f32(wd[n,b]) * f32(xd[r,b])) * dots[b,r,n]."""
    return scale_and_reduce_f32(dots, wd.astype(F32).T, xd)


def scale_and_reduce_f32(dots: np.ndarray, wd_t: np.ndarray, xd: np.ndarray, out: np.ndarray | None = None):
    """scale_and_reduce with the weight scales already as float32 [nb, N] (a backend keeps them so);
    `out`, if given, is a float32 scratch array of dots' shape for the terms."""
    terms = np.multiply(wd_t[:, None, :], xd.astype(F32).T[:, :, None], out=out)  # [nb, R, N]
    terms *= dots
    return lane_sum(terms, axis=0, overwrite=True)


def q8_gemv(w, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """W8A8 matrix-vector products for R rows: Q8Matrix w [N, K], activations quantized by quantize_q8_0
    (xq int8 [R, K], xd f16 [R, K/32]) -> float32 [R, N] (SPEC.md, "Q8_0 GEMV")."""
    return scale_and_reduce(block_dots(w.q, xq), w.d, xd)


def embed(w, ids: np.ndarray) -> np.ndarray:
    """Rows of a Q8Matrix [n_vocab, n_embd] for token ids [R] -> float32 [R, n_embd]; d * q is exact."""
    ids = np.asarray(ids)
    q = w.q_blocks[ids].astype(F32)  # [R, n_embd/32, 32]: only the rows asked for are read
    d = w.d[ids].astype(F32)  # [R, n_embd/32]
    return (q * d[:, :, None]).reshape(len(ids), -1)


# ------------------------------------------------------------------------------------------------- rope
def rope(x: np.ndarray, pos0: int, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate x [R, H, D] for positions pos0 .. pos0+R-1 with rope_table's cos and sin (refspec/rope.py).
    Pairs (2i, 2i+1), or (i, i + n_rot/2) when neox; dimensions at and beyond n_rot pass through.
    a' = a*c - b*s, b' = a*s + b*c."""
    x = np.asarray(x, F32)
    rows = x.shape[0]
    half = cos.shape[1]
    c = cos[pos0 : pos0 + rows][:, None, :]  # [R, 1, n_rot/2]
    s = sin[pos0 : pos0 + rows][:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half : 2 * half]
        out[..., :half] = a * c - b * s
        out[..., half : 2 * half] = a * s + b * c
    else:
        a, b = x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2]
        out[..., 0 : 2 * half : 2] = a * c - b * s
        out[..., 1 : 2 * half : 2] = a * s + b * c
    return out


# -------------------------------------------------------------------------------------------- attention
def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int) -> np.ndarray:
    """Causal GQA attention for R query rows at positions pos0 .. pos0+R-1 (SPEC.md, "Attention").

    q [R, H, D]; k_cache, v_cache [G, T, D] with positions 0 .. pos0+R-1 written; head h reads kv head
    h // (H/G). Row r sees positions t <= pos0 + r:
        s_t = lane_sum_d(q * k_t) * (1 / sqrt(D));  m = max_t s_t;  e_t = exp(s_t - m)
        out = chunked_sum_t(e_t * v_t) / chunked_sum_t(e_t)
    Positions a row may not see enter as s_t = -inf, so e_t = +0, and their terms e_t * v_t are +0 too:
    they add nothing, even where v_t is infinite or NaN (a later row of the same pass that overflowed), so
    a row's bits never depend on the rows after it.
    """
    rows, n_head, dim = q.shape
    n_kv = k_cache.shape[0]
    n_pos = pos0 + rows
    group = n_head // n_kv
    # The summed axis comes first in each product below, so the lane sums add whole contiguous rows.
    q_t = np.moveaxis(q.reshape(rows, n_kv, group, 1, dim), -1, 0)  # [R, H, D] -> [D, R, G, H/G, 1]
    k_t = k_cache[:, :n_pos].transpose(2, 0, 1)[:, None, :, None, :]  # [G, T, D] -> [D, 1, G, 1, T]
    v_t = v_cache[:, :n_pos].transpose(1, 0, 2)[:, None, :, None, :]  # [G, T, D] -> [T, 1, G, 1, D]
    scale = F32(1) / np.sqrt(F32(dim))
    scores = lane_sum(q_t * k_t, axis=0) * scale  # [D, R, G, H/G, T] -> [R, G, H/G, T]
    if rows > 1:  # row r sees positions t <= pos0 + r
        hidden = np.arange(n_pos)[None, :] > (pos0 + np.arange(rows))[:, None]  # [R, T]
        scores[np.broadcast_to(hidden[:, None, None, :], scores.shape)] = -np.inf
    e = exp(scores - scores.max(axis=-1, keepdims=True))  # [R, G, H/G, T]
    denom = chunked_sum(e, axis=-1)  # [R, G, H/G]
    terms = np.moveaxis(e, -1, 0)[..., None] * v_t  # [T, R, G, H/G, D]
    if rows > 1:  # +0 * inf or NaN would be NaN: a hidden position's term is +0 whatever v holds
        terms[np.broadcast_to(hidden.T[:, :, None, None, None], terms.shape)] = 0
    num = chunked_sum(terms, axis=0)  # [R, G, H/G, D]
    return (num / denom[..., None]).reshape(rows, n_head, dim)


# ------------------------------------------------------------------------------------------------ argmax
def argmax_rows(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of logits [R, V]: the index of its largest value, ties going to the lowest index, and
    whether the row is finite. A row with NaN or infinity chooses no token (see `argmax`)."""
    logits = np.asarray(logits)
    return np.argmax(logits, axis=-1), np.isfinite(logits).all(axis=-1)


def argmax(logits: np.ndarray) -> np.ndarray:
    """Index of the largest logit of each row [R, V] -> [R]; ties go to the lowest index.
    NaN or infinity anywhere is an error, not a token."""
    return checked_ids(*argmax_rows(logits))


def checked_ids(ids: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """`ids` from an argmax_rows (of any backend), or NumericsError naming the first non-finite row."""
    if not np.all(finite):
        raise _no_token(int(np.flatnonzero(~np.asarray(finite))[0]))
    return ids


def token_of(ids: np.ndarray, finite: np.ndarray, row: int) -> int:
    """The token row `row` chooses, from an argmax_rows; only that row has to be finite (a decoding loop
    never looks at the rows after a rejected guess)."""
    if not finite[row]:
        raise _no_token(row)
    return int(ids[row])


def _no_token(row: int) -> NumericsError:
    return NumericsError(f"logits of row {row} contain NaN or infinity; no token can be chosen")


# ================================================================ Gated DeltaNet and gated attention (qwen35)
# SPEC.md, "Hybrid models (qwen35)". Every function below is elementwise or reduces with lane_sum, and the
# recurrence runs strictly one token after another, so R rows in one call equal R single-row calls.

# ---------------------------------------------------------------------------------------------- log1p
# log1p(y) for y >= 0: u = 1 + y rounded, c = (y - (u - 1)) / u restores what the rounding lost (to first
# order), log(u) = e*ln2 + log(m) with u = 2**e * m, m in [sqrt(1/2), sqrt(2)], and
# log(m) = 2 atanh(s), s = (m - 1) / (m + 1), as s + s + s*z*(2/3 + z*(2/5 + ...)), z = s*s.
LOG_SQRT2 = F32(1.41421353816986083984375)  # sqrt(2) rounded down to binary32: m above it is halved
LOG_LN2_HI = F32(0.693359375)  # as EXP_LN2_HI: e * LOG_LN2_HI is exact for |e| < 2**15
LOG_LN2_LO = F32(-2.12194440e-4)
LOG_POLY = tuple(F32(2.0 / n) for n in (3.0, 5.0, 7.0, 9.0, 11.0))  # 2/(2i+1), i = 1..5


def log1p(y: np.ndarray) -> np.ndarray:
    """refspec's log(1 + y) in binary32 for y >= 0 (SPEC.md, "log1p"); +inf -> +inf, NaN -> NaN.
    Negative inputs are outside the spec (softplus, its one user, passes exp(x) >= 0)."""
    y = np.asarray(y, dtype=F32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        u = F32(1) + y
        c = (y - (u - F32(1))) / u  # the part of y that 1 + y rounded away, relative to u
        bits = u.view(np.uint32).astype(np.int64)
        e = (bits >> 23) - 127  # u >= 1: a normal number, e >= 0
        m = ((bits & 0x7FFFFF) | 0x3F800000).astype(np.uint32).view(F32)  # mantissa in [1, 2)
        big = m > LOG_SQRT2
        m = np.where(big, m * F32(0.5), m)  # exact
        ef = (e + big).astype(F32)  # exact: |e| < 2**24
        f = m - F32(1)  # exact (Sterbenz)
        s = f / (F32(2) + f)
        z = s * s
        p = z * LOG_POLY[4] + LOG_POLY[3]
        for coef in LOG_POLY[2::-1]:
            p = p * z + coef
        log_m = (s + s) + (s * z) * p
        out = ef * LOG_LN2_HI + ((ef * LOG_LN2_LO + log_m) + c)
    out = np.where(u == F32(1), y, out)  # y below half an ulp of 1: log1p(y) = y to binary32 precision
    out = np.where(np.isinf(y), y, out)
    return np.where(np.isnan(y), y, out).astype(F32)


# ----------------------------------------------------------------------------------- activations
SOFTPLUS_LINEAR = F32(20.0)  # softplus(x) = x above this, as ggml and PyTorch's default threshold


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), elementwise."""
    x = np.asarray(x, F32)
    return F32(1) / (F32(1) + exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    """x / (1 + exp(-x)), elementwise (the same steps as silu_mul's gate)."""
    x = np.asarray(x, F32)
    return x / (F32(1) + exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    """x if x > 20, else log1p(exp(x)), elementwise."""
    x = np.asarray(x, F32)
    return np.where(x > SOFTPLUS_LINEAR, x, log1p(exp(np.minimum(x, SOFTPLUS_LINEAR)))).astype(F32)


# ------------------------------------------------------------------------------------- normalisations
def l2norm(x: np.ndarray, eps: float) -> np.ndarray:
    """Over the last axis: x * (1 / sqrt(lane_sum(x*x) + eps))."""
    x = np.asarray(x, F32)
    inv = F32(1) / np.sqrt(lane_sum(x * x) + F32(eps))
    return x * inv[..., None]


def gated_rmsnorm(x: np.ndarray, w: np.ndarray, z: np.ndarray, eps: float) -> np.ndarray:
    """rmsnorm(x, w) * silu(z) over the last axis (DeltaNet's output norm, per value head)."""
    return rmsnorm(x, w, eps) * silu(z)


def sigmoid_gate(x: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """x * sigmoid(gate): the output gate of qwen35's full-attention layers."""
    return np.asarray(x, F32) * sigmoid(gate)


# --------------------------------------------------------------------------------- recurrent-state rings
def ring_slots(pos0: int, rows: int, n_states: int) -> tuple[int | None, list[int]]:
    """Where a pass over positions pos0 .. pos0+rows-1 finds and leaves a recurrent state in a ring of
    n_states slots (the state after position p lives in slot p % n_states): (the slot of the state after
    pos0-1, or None at position 0, where the state is zeros; the slot of each row's state). A later row's
    state overwrites an earlier one's in the same slot. The GPU kernels compute the same from a device
    position (kernels_raw/deltanet.hip)."""
    read = None if pos0 == 0 else (pos0 - 1) % n_states
    return read, [(pos0 + r) % n_states for r in range(rows)]


# ------------------------------------------------------------------------------------------ conv1d
def conv1d_causal(x: np.ndarray, state: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal depthwise convolution over R rows x [R, C], continuing `state` [C, K-1] (the K-1 inputs before
    row 0, oldest first); w [C, K], tap K-1 on the current row. Returns (y [R, C], windows [R, C, K-1]):
        y[r, c] = lane_sum over t < K of (w[c, t] * in[r + t, c]),  in = state's rows, then x's rows
    and windows[r] = the state after row r (its K-1 newest inputs), so a decoder may resume after any row."""
    x = np.asarray(x, F32)
    taps = w.shape[1]
    seq = np.concatenate([np.asarray(state, F32).T, x])  # [K-1+R, C]
    win = np.lib.stride_tricks.sliding_window_view(seq, taps, axis=0)  # [R, C, K]: rows r .. r+K-1
    y = lane_sum(win * np.asarray(w, F32))  # [R, C]
    return y, win[:, :, 1:]


# ------------------------------------------------------------------------------------ the delta rule
def deltanet_gates(alpha, b, dt_bias, a):
    """Per row and value head, from the alpha and beta projections [R, Hv]:
    decay = exp(softplus(alpha + dt_bias) * a) (a = ssm_a < 0, so decay is in [0, 1]); beta = sigmoid(b)."""
    g = softplus(np.asarray(alpha, F32) + np.asarray(dt_bias, F32)) * np.asarray(a, F32)
    return exp(g), sigmoid(b)


def delta_rule_step(q, k, v, decay, beta, s):
    """One token of the gated delta rule (SPEC.md, "Gated delta rule"): q, k [Hk, Dk] (L2-normalised),
    v [Hv, Dv], decay, beta [Hv], the state s [Hv, Dv, Dk] before the token -> (o [Hv, Dv], the state
    after it). Value head h reads key head h % Hk. In order, per head:
        q = q * (1 / sqrt(Dk));  S = S * decay;  u[i] = lane_sum_j(S[i, j] * k[j])
        d[i] = (v[i] - u[i]) * beta;  S[i, j] = S[i, j] + k[j] * d[i];  o[i] = lane_sum_j(S[i, j] * q[j])"""
    n_v, dim = v.shape[0], k.shape[1]
    tile = np.arange(n_v) % k.shape[0]  # value head -> key head (GGUF stores value heads tiled)
    scale = F32(1) / np.sqrt(F32(dim))
    kh = np.asarray(k, F32)[tile][:, None, :]  # [Hv, 1, Dk]
    qh = (np.asarray(q, F32) * scale)[tile][:, None, :]
    s = s * np.asarray(decay, F32)[:, None, None]
    d = (np.asarray(v, F32) - lane_sum(s * kh)) * np.asarray(beta, F32)[:, None]  # [Hv, Dv]
    s = s + kh * d[:, :, None]
    return lane_sum(s * qh), s


def delta_rule(q, k, v, decay, beta, state):
    """The gated delta rule over R rows, strictly one after another: q, k [R, Hk, Dk], v [R, Hv, Dv],
    decay, beta [R, Hv], state [Hv, Dv, Dk] before row 0 -> (o [R, Hv, Dv], states [R, Hv, Dv, Dk], the
    state after each row, so a decoder may resume after any of them)."""
    s = np.asarray(state, F32)
    out = np.empty(np.shape(v), F32)
    states = np.empty((len(v),) + s.shape, F32)
    for r in range(len(v)):
        out[r], s = delta_rule_step(q[r], k[r], v[r], decay[r], beta[r], s)
        states[r] = s
    return out, states
