"""The CPU backend's compiled Q8_0 GEMV: the bits of refspec.spec.q8_gemv (SPEC.md, "Q8_0 GEMV"), computed
from the weights' GGUF blocks where they lie (normally the memory-mapped file; no float32 copy of the weights).

For output n, activation row r and block b, SPEC.md fixes
    t[b] = (float(wd[n, b]) * float(xd[r, b])) * float(dot(n, r, b)),    y[r, n] = lane_sum over b of t[b]
where the block dot is an exact integer (|dot| <= 128 * 127 * 32 < 2**24), so it may be computed any way; the
float steps and the lane order are not free. Here:

* the block dots are integer SIMD (16-bit products summed pairwise into 32 bits: x86's pmaddwd, written as
  generic LLVM vector IR that LLVM lowers for whichever CPU it compiles for);
* every float step is one IEEE binary32 multiply or add, in the spec's order: numba compiles without fastmath,
  so LLVM neither reorders nor contracts them into FMAs (tests/test_cpu_gemv_kernel.py checks the bits);
* lane l of output (r, n) is a float32 that starts at +0.0 and adds t[l], t[l+32], ... in block order; the 32
  lanes are then added by halving (16, 8, 4, 2, 1 apart), as refspec.spec.lane_sum. A lane that receives no
  block holds +0.0, which changes no sum (SPEC.md, "Reductions").

Two loop orders, the same bits. Few activation rows (a decoding step): eight columns at a time, each weight
block read once and dotted with each row (`_columns_few_rows`: pmaddwd per column, the eight columns' partial
sums reduced together into one vector of eight dots, so the scaling and the lane add run eight columns wide).
More rows (a prompt or a verify pass): the activations are laid out once as int16 pairs [block, row group, pair,
8 rows, 2] (`prepare_rows`), and each weight block is dotted with 8 rows per vector, the weight pair broadcast,
while it sits in a register (`_columns_row_groups`: column tile -> block -> column -> row groups).

Threads: `gemv_tasks` hands ranges of columns to numba's threads (prange; a launch costs a few microseconds).

Compiled once per machine: numba caches the machine code next to this file (or in its user-wide cache
directory, or NUMBA_CACHE_DIR); where no cache directory is writable it compiles on each first call instead.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from refspec.errors import UsageError

QK8_0 = 32  # values per Q8_0 block
BLOCK_BYTES = 34  # a GGUF Q8_0 block: fp16 scale, then 32 int8 quants
ROW_GROUP = 8  # activation rows per vector of dots: 8 int32 lanes fill one 256-bit register
FEW_ROWS = 2  # up to this many rows, the horizontal-sum loop order is the faster (measured: README, "CPU")
TILE_COLUMNS = 16  # output columns whose lanes [16, 32, rows] stay in cache while the blocks go by
COLUMN_GROUP = 8  # columns whose dots one call of the few-rows block routine reduces together (8 int32 lanes)
GROUPS_PER_CALL = (8, 4, 2, 1)  # row groups one inlined dot routine handles (8 groups = 64 rows in 8 registers)

# fp16 -> float32 for every fp16 bit pattern, by NumPy's conversion (exact; the spec's own `.astype(F32)`): a
# scale is one table load instead of a decode with branches (twice as fast per block in a decoding step).
F16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()


def _cache_option() -> bool:
    """cache=True when numba has somewhere to write its cache (next to this file, its user-wide directory or
    NUMBA_CACHE_DIR); numba refuses to decorate otherwise, and compiling on each first call is the fallback."""
    try:
        @njit(cache=True)
        def probe():  # pragma: no cover - compiled lazily, never called
            return 0
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    return True


CACHE = _cache_option()


# ------------------------------------------------------------------------------------------ LLVM pieces
def _is_c_array(ty, dtype) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.layout == "C"


def _element_pointer(context, builder, array_type, array, offset):
    """Pointer to element `offset` of a C-contiguous array, counted over its flat data."""
    data = cgutils.create_struct_proxy(array_type)(context, builder, value=array).data
    return builder.gep(data, [offset])


def _vector_at(builder, pointer, element, count, offset=0):
    """`pointer + offset` (elements) as a pointer to a vector of `count` elements."""
    if offset:
        pointer = builder.gep(pointer, [ir.Constant(ir.IntType(64), offset)])
    return builder.bitcast(pointer, ir.VectorType(element, count).as_pointer())


def _splat(builder, scalar, count):
    vector_type = ir.VectorType(scalar.type, count)
    v = builder.insert_element(ir.Constant(vector_type, None), scalar, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, count), [0] * count)
    return builder.shuffle_vector(v, ir.Constant(vector_type, None), zeros)


def _pair_sums(builder, products):
    """<2n x i32> products -> <n x i32> sums of adjacent pairs (with 16-bit operands: pmaddwd on x86)."""
    n = products.type.count // 2
    evens = ir.Constant(ir.VectorType(_I32, n), list(range(0, 2 * n, 2)))
    odds = ir.Constant(ir.VectorType(_I32, n), list(range(1, 2 * n, 2)))
    return builder.add(builder.shuffle_vector(products, products, evens),
                       builder.shuffle_vector(products, products, odds))


@intrinsic
def _block_dot(typingctx, w, w_at, x, x_at):
    """The int32 dot product of the 32 int8 values at w's flat element w_at and x's x_at."""
    if not (_is_c_array(w, types.int8) and _is_c_array(x, types.int8)):
        return None

    def codegen(context, builder, signature, args):
        w_arr, w_off, x_arr, x_off = args
        pw = _element_pointer(context, builder, signature.args[0], w_arr, w_off)
        px = _element_pointer(context, builder, signature.args[2], x_arr, x_off)
        vw = builder.load(_vector_at(builder, pw, _I8, 32), align=1)
        vx = builder.load(_vector_at(builder, px, _I8, 32), align=1)
        wide = ir.VectorType(_I32, 32)
        products = builder.mul(builder.sext(vw, wide), builder.sext(vx, wide))  # exact: |w * x| <= 16384
        reduce_add = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [wide]),
                                                    "llvm.vector.reduce.add.v32i32")
        return builder.call(reduce_add, [products])  # exact integer sum, any order

    return types.int32(w, w_at, x, x_at), codegen


def _row_groups_block(n_groups: int):
    """An intrinsic for one weight block and `n_groups` groups of 8 activation rows:
    lanes[at + i] += (wd * xs[xs_at + i]) * float(dot_i) for the 8 * n_groups rows i, where dot_i is the
    integer dot of the 32 int8 weights at w[w_at] with row i's quants in xt (int16 pairs from x_at:
    [group, pair, 8 rows, 2])."""

    @intrinsic
    def block(typingctx, w, w_at, xt, x_at, wd, xs, xs_at, lanes, lanes_at):
        if not (_is_c_array(w, types.int8) and _is_c_array(xt, types.int16) and _is_c_array(xs, types.float32)
                and _is_c_array(lanes, types.float32) and wd == types.float32):
            return None

        def codegen(context, builder, signature, args):
            w_arr, w_off, xt_arr, x_off, wd_value, xs_arr, xs_off, lanes_arr, lanes_off = args
            pw = _element_pointer(context, builder, signature.args[0], w_arr, w_off)
            px = _element_pointer(context, builder, signature.args[2], xt_arr, x_off)
            pxs = _element_pointer(context, builder, signature.args[5], xs_arr, xs_off)
            plane = _element_pointer(context, builder, signature.args[7], lanes_arr, lanes_off)
            # the block's 32 weights as 16 int32 words of two int16 each: word p is the pair (2p, 2p+1)
            w16 = builder.sext(builder.load(_vector_at(builder, pw, _I8, 32), align=1), ir.VectorType(_I16, 32))
            words = builder.bitcast(w16, ir.VectorType(_I32, 16))
            dots = [ir.Constant(ir.VectorType(_I32, 8), None)] * n_groups
            for p in range(QK8_0 // 2):
                pair = builder.shuffle_vector(words, words, ir.Constant(ir.VectorType(_I32, 8), [p] * 8))
                pair = builder.sext(builder.bitcast(pair, ir.VectorType(_I16, 16)), ir.VectorType(_I32, 16))
                for g in range(n_groups):
                    xv = builder.load(_vector_at(builder, px, _I16, 16, (g * 16 + p) * 16), align=2)
                    products = builder.mul(builder.sext(xv, ir.VectorType(_I32, 16)), pair)
                    dots[g] = builder.add(dots[g], _pair_sums(builder, products))
            f8 = ir.VectorType(_F32, 8)
            wd8 = _splat(builder, wd_value, 8)
            for g in range(n_groups):
                scale = builder.fmul(wd8, builder.load(_vector_at(builder, pxs, _F32, 8, 8 * g), align=4))
                term = builder.fmul(scale, builder.sitofp(dots[g], f8))  # (wd * xd) * dot, two roundings
                lane = _vector_at(builder, plane, _F32, 8, 8 * g)
                builder.store(builder.fadd(builder.load(lane, align=4), term), lane, align=4)
            return context.get_dummy_value()

        return types.void(w, w_at, xt, x_at, wd, xs, xs_at, lanes, lanes_at), codegen

    return block


_block_8_groups, _block_4_groups, _block_2_groups, _block_1_group = (_row_groups_block(g) for g in GROUPS_PER_CALL)


def _prefetch(builder, pointer):
    """A hint to fetch the cache line at `pointer` (read, keep in every level). The few-rows loop asks, at
    each block, for the same block of the next eight columns: eight short interleaved streams (a row of the
    default model is 612 bytes) are too short for the hardware prefetcher to follow, and without the hint a
    matrix larger than the caches ran at half the speed."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                        "llvm.prefetch.p0i8")
    builder.call(fn, [builder.bitcast(pointer, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _hadd(builder, a, b):
    """<8 x i32> a, b -> pair sums: a's four in elements 0..3, b's in 4..7 (integer: exact in any order)."""
    evens = ir.Constant(ir.VectorType(_I32, 8), list(range(0, 16, 2)))
    odds = ir.Constant(ir.VectorType(_I32, 8), list(range(1, 16, 2)))
    return builder.add(builder.shuffle_vector(a, b, evens), builder.shuffle_vector(a, b, odds))


def _sums_of_8(builder, vectors):
    """Eight <8 x i32> vectors -> one <8 x i32> whose element i is the sum of vector i's elements: three
    levels of pair sums (each level keeps the vectors' order, so the last one lands in column order)."""
    while len(vectors) > 1:
        vectors = [_hadd(builder, vectors[i], vectors[i + 1]) for i in range(0, len(vectors), 2)]
    return vectors[0]


def _columns_block(n_rows: int):
    """An intrinsic for one block of COLUMN_GROUP weight rows (columns) and n_rows activation rows:
    lanes[lanes_at + r * lanes_stride + i] += (wd_i * xs[xs_at + r * xs_stride]) * float(dot_ri) for columns
    i < 8, where column i's block is the fp16 scale and 32 int8 quants at w's flat element w_at + i * row_bytes
    - 2 (wd_i its scale through the table f16) and dot_ri its integer dot with the 32 int16 quants of row r at
    x16[x_at + r * x_stride]. The eight dots are summed pairwise (pmaddwd) and reduced together, so the float
    steps run on eight columns at once."""

    @intrinsic
    def block(typingctx, w, w_at, row_bytes, x16, x_at, x_stride, f16, xs, xs_at, xs_stride, lanes, lanes_at,
              lanes_stride):
        if not (_is_c_array(w, types.int8) and _is_c_array(x16, types.int16) and _is_c_array(f16, types.float32)
                and _is_c_array(xs, types.float32) and _is_c_array(lanes, types.float32)):
            return None

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            # every integer argument as i64; arrays stay as they are
            v = [context.cast(builder, value, ty, types.int64) if isinstance(ty, types.Integer) else value
                 for value, ty in zip(args, signature.args)]
            w_arr, w_off, stride, x_arr, x_off, x_step, f16_arr, xs_arr, xs_off, xs_step, lanes_arr, lanes_off, \
                lanes_step = v

            def pointer(index, offset):  # to element `offset` of array argument `index`
                return _element_pointer(context, builder, signature.args[index], v[index], offset)

            def plus(base, step, k):  # base + step * k
                return builder.add(base, builder.mul(step, ir.Constant(i64, k)))

            w32, scales = [], ir.Constant(ir.VectorType(_F32, COLUMN_GROUP), None)
            for i in range(COLUMN_GROUP):
                pw = pointer(0, plus(w_off, stride, i))
                _prefetch(builder, builder.gep(pw, [builder.mul(stride, ir.Constant(i64, COLUMN_GROUP))]))
                w16 = builder.sext(builder.load(_vector_at(builder, pw, _I8, 32), align=1), ir.VectorType(_I16, 32))
                w32.append(builder.sext(w16, ir.VectorType(_I32, 32)))  # from 16 bits: pmaddwd's operands
                # the fp16 scale: the two bytes before the quants, little-endian -> float32 by the table
                scale_at = builder.bitcast(builder.gep(pw, [ir.Constant(i64, -2)]), _I16.as_pointer())
                scale = builder.load(pointer(6, builder.zext(builder.load(scale_at, align=1), i64)), align=4)
                scales = builder.insert_element(scales, scale, ir.Constant(_I32, i))
            f8 = ir.VectorType(_F32, COLUMN_GROUP)
            lo = ir.Constant(ir.VectorType(_I32, 8), list(range(8)))
            hi = ir.Constant(ir.VectorType(_I32, 8), list(range(8, 16)))
            for r in range(n_rows):
                xv = builder.load(_vector_at(builder, pointer(3, plus(x_off, x_step, r)), _I16, 32), align=2)
                x32 = builder.sext(xv, ir.VectorType(_I32, 32))
                sums = []
                for i in range(COLUMN_GROUP):
                    pairs = _pair_sums(builder, builder.mul(w32[i], x32))  # <16 x i32>: pmaddwd
                    sums.append(builder.add(builder.shuffle_vector(pairs, pairs, lo),
                                            builder.shuffle_vector(pairs, pairs, hi)))
                dots = _sums_of_8(builder, sums)
                xd = _splat(builder, builder.load(pointer(7, plus(xs_off, xs_step, r)), align=4), COLUMN_GROUP)
                term = builder.fmul(builder.fmul(scales, xd), builder.sitofp(dots, f8))  # (wd * xd) * dot
                lane = _vector_at(builder, pointer(10, plus(lanes_off, lanes_step, r)), _F32, COLUMN_GROUP)
                builder.store(builder.fadd(builder.load(lane, align=4), term), lane, align=4)
            return context.get_dummy_value()

        return types.void(w, w_at, row_bytes, x16, x_at, x_stride, f16, xs, xs_at, xs_stride, lanes, lanes_at,
                          lanes_stride), codegen

    return block


_columns_block_1_row, _columns_block_2_rows = _columns_block(1), _columns_block(2)


# ---------------------------------------------------------------------------------------- compiled loops
@njit(inline="always")
def _scale(lo, hi, f16):
    """The fp16 scale stored little-endian in bytes lo, hi (int8) -> float32, exactly (f16: F16_TO_F32)."""
    return f16[(np.int32(np.uint8(hi)) << 8) | np.int32(np.uint8(lo))]


@njit(inline="always")
def _halving_sum(lanes):
    """The 32 lanes added 16, 8, 4, 2, 1 apart (refspec.spec._tree); lanes is overwritten."""
    width = 16
    while width >= 1:
        for k in range(width):
            lanes[k] += lanes[k + width]
        width //= 2
    return lanes[0]


@njit(nogil=True, cache=CACHE)
def _columns_few_rows(rows, xq, x16, xs, out, out_col, c0, c1, f16):
    """out[r, out_col + c] for c in c0..c1-1 and every row r (1 or 2): eight columns at a time, each weight
    block read once and dotted with each row; the columns left over one at a time."""
    n_rows, nb = xs.shape
    k = nb * QK8_0
    row_bytes = rows.shape[1]
    lanes = np.zeros((n_rows, 32, COLUMN_GROUP), np.float32)
    stop = c0 + (c1 - c0) // COLUMN_GROUP * COLUMN_GROUP
    for t0 in range(c0, stop, COLUMN_GROUP):
        lanes[:] = 0
        w_at = t0 * row_bytes + 2
        if n_rows == 1:  # (two loops: LLVM merges the two routines' loads badly inside one)
            for b in range(nb):
                _columns_block_1_row(rows, w_at + b * BLOCK_BYTES, row_bytes, x16, b * QK8_0, k, f16, xs, b, nb,
                                     lanes, (b & 31) * COLUMN_GROUP, 32 * COLUMN_GROUP)
        else:
            for b in range(nb):
                _columns_block_2_rows(rows, w_at + b * BLOCK_BYTES, row_bytes, x16, b * QK8_0, k, f16, xs, b, nb,
                                      lanes, (b & 31) * COLUMN_GROUP, 32 * COLUMN_GROUP)
        width = 16  # the halving sum of the 32 lanes, eight columns at once
        while width >= 1:
            for i in range(width):
                for r in range(n_rows):
                    for j in range(COLUMN_GROUP):
                        lanes[r, i, j] += lanes[r, i + width, j]
            width //= 2
        for r in range(n_rows):
            for j in range(COLUMN_GROUP):
                out[r, out_col + t0 + j] = lanes[r, 0, j]
    column_lanes = np.zeros((n_rows, 32), np.float32)
    for c in range(stop, c1):
        column_lanes[:] = 0
        for b in range(nb):
            at = b * BLOCK_BYTES
            wd = _scale(rows[c, at], rows[c, at + 1], f16)
            for r in range(n_rows):
                dot = _block_dot(rows, c * row_bytes + at + 2, xq, (r * nb + b) * QK8_0)
                column_lanes[r, b & 31] += (wd * xs[r, b]) * np.float32(dot)
        for r in range(n_rows):
            out[r, out_col + c] = _halving_sum(column_lanes[r])


@njit(nogil=True, cache=CACHE)
def prepare_rows(xq, xs):
    """Activation quants int8 [R, K] and scales float32 [R, nb] -> int16 pairs xt [nb, G, 16, 8, 2] and
    scales xs_t [nb, 8G] (G = ceil(R / 8) groups of 8 rows; rows past R are zeros)."""
    n_rows, nb = xs.shape
    groups = (n_rows + ROW_GROUP - 1) // ROW_GROUP
    xt = np.zeros((nb, groups, QK8_0 // 2, ROW_GROUP, 2), np.int16)
    xs_t = np.zeros((nb, groups * ROW_GROUP), np.float32)
    for r in range(n_rows):
        g, i = r // ROW_GROUP, r % ROW_GROUP
        for b in range(nb):
            xs_t[b, r] = xs[r, b]
            for p in range(QK8_0 // 2):
                xt[b, g, p, i, 0] = xq[r, b * QK8_0 + 2 * p]
                xt[b, g, p, i, 1] = xq[r, b * QK8_0 + 2 * p + 1]
    return xt, xs_t


@njit(nogil=True, cache=CACHE)
def _columns_row_groups(rows, xt, xs_t, n_rows, out, out_col, c0, c1, f16):
    """out[r, out_col + c] for c in c0..c1-1 and rows r < n_rows, from prepare_rows' layout."""
    nb, groups = xt.shape[0], xt.shape[1]
    padded = groups * ROW_GROUP
    row_bytes = rows.shape[1]
    group_stride = QK8_0 // 2 * ROW_GROUP * 2  # int16 values per row group of one block
    lanes = np.zeros((TILE_COLUMNS, 32, padded), np.float32)
    scales = np.zeros((TILE_COLUMNS, nb), np.float32)
    whole, rest = groups // 8, groups % 8
    for t0 in range(c0, c1, TILE_COLUMNS):
        t1 = min(t0 + TILE_COLUMNS, c1)
        lanes[:] = 0
        for c in range(t0, t1):  # the tile's fp16 scales, decoded once
            for b in range(nb):
                scales[c - t0, b] = _scale(rows[c, b * BLOCK_BYTES], rows[c, b * BLOCK_BYTES + 1], f16)
        for b in range(nb):
            x_at, xs_at = b * groups * group_stride, b * padded
            for c in range(t0, t1):
                wd = scales[c - t0, b]
                w_at = c * row_bytes + b * BLOCK_BYTES + 2
                lane_at = ((c - t0) * 32 + (b & 31)) * padded
                for k in range(whole):  # 64 rows a call, then the rest in calls of 4, 2, 1 groups
                    g = 8 * k
                    _block_8_groups(rows, w_at, xt, x_at + g * group_stride, wd, xs_t, xs_at + g * ROW_GROUP,
                                    lanes, lane_at + g * ROW_GROUP)
                g = 8 * whole
                if rest & 4:
                    _block_4_groups(rows, w_at, xt, x_at + g * group_stride, wd, xs_t, xs_at + g * ROW_GROUP,
                                    lanes, lane_at + g * ROW_GROUP)
                    g += 4
                if rest & 2:
                    _block_2_groups(rows, w_at, xt, x_at + g * group_stride, wd, xs_t, xs_at + g * ROW_GROUP,
                                    lanes, lane_at + g * ROW_GROUP)
                    g += 2
                if rest & 1:
                    _block_1_group(rows, w_at, xt, x_at + g * group_stride, wd, xs_t, xs_at + g * ROW_GROUP,
                                   lanes, lane_at + g * ROW_GROUP)
        for c in range(t0, t1):  # the halving sum of every row's lanes at once (same additions per row)
            width = 16
            while width >= 1:
                for k in range(width):
                    for r in range(n_rows):
                        lanes[c - t0, k, r] += lanes[c - t0, k + width, r]
                width //= 2
            for r in range(n_rows):
                out[r, out_col + c] = lanes[c - t0, 0, r]


@njit(nogil=True, parallel=True, cache=CACHE)
def _few_rows_tasks(rows, xq, x16, xs, out, out_col, bounds, f16):
    """_columns_few_rows over the column ranges bounds[t]..bounds[t+1], spread over numba's threads."""
    for t in prange(bounds.shape[0] - 1):
        _columns_few_rows(rows, xq, x16, xs, out, out_col, bounds[t], bounds[t + 1], f16)


@njit(nogil=True, parallel=True, cache=CACHE)
def _row_groups_tasks(rows, xt, xs_t, n_rows, out, out_col, bounds, f16):
    """_columns_row_groups over the column ranges bounds[t]..bounds[t+1], spread over numba's threads."""
    for t in prange(bounds.shape[0] - 1):
        _columns_row_groups(rows, xt, xs_t, n_rows, out, out_col, bounds[t], bounds[t + 1], f16)


# ------------------------------------------------------------------------------------ the Python wrapper
class PreparedRows:
    """One GEMV's activation rows, laid out once for every column task: int8 quants [R, K] and float32 scales
    [R, nb] (few rows), or prepare_rows' int16 pairs (more)."""

    def __init__(self, xq: np.ndarray, xd: np.ndarray):
        if xq.ndim != 2 or xd.ndim != 2 or xq.shape[1] != QK8_0 * xd.shape[1] or xq.shape[0] != xd.shape[0]:
            raise UsageError(f"activations {xq.shape} and scales {xd.shape} do not match")
        self.n_rows, self.nb = xd.shape
        self.xq = np.ascontiguousarray(xq, np.int8)
        self.xs = np.ascontiguousarray(xd.astype(np.float32))  # fp16 -> float32, exact
        self.grouped = self.n_rows > FEW_ROWS
        if not self.grouped:
            self.x16 = self.xq.astype(np.int16)
        else:
            self.xt, self.xs_t = prepare_rows(self.xq, self.xs)


def _check(rows: np.ndarray, x: PreparedRows, out: np.ndarray, out_col: int, c0: int, c1: int) -> None:
    if rows.dtype != np.int8 or rows.ndim != 2 or rows.shape[1] != x.nb * BLOCK_BYTES or not rows.flags.c_contiguous:
        raise UsageError(f"weight rows {rows.dtype} {rows.shape} are not C-contiguous int8 blocks of {x.nb} x 34 bytes")
    if not (0 <= c0 <= c1 <= rows.shape[0]) or out.dtype != np.float32 or not out.flags.c_contiguous \
            or out.shape[0] != x.n_rows or not 0 <= out_col <= out.shape[1] - (c1 - c0):
        raise UsageError(f"columns {c0}..{c1} of {rows.shape[0]} do not fit output {out.shape} at {out_col}")


def gemv_columns(rows: np.ndarray, x: PreparedRows, out: np.ndarray, out_col: int, c0: int, c1: int) -> None:
    """out[:, out_col + c] = the GEMV of weight rows c0..c1-1 of `rows` (int8 [N, nb*34]: GGUF Q8_0 blocks,
    C-contiguous) with x's activation rows, for c in c0..c1-1. Releases the GIL: call it from several threads
    on disjoint columns."""
    _check(rows, x, out, out_col, c0, c1)
    if c0 == c1:
        return
    if x.grouped:
        _columns_row_groups(rows, x.xt, x.xs_t, x.n_rows, out, out_col - c0, c0, c1, F16_TO_F32)
    else:
        _columns_few_rows(rows, x.xq, x.x16, x.xs, out, out_col - c0, c0, c1, F16_TO_F32)


@njit(cache=CACHE)
def _increasing(bounds):
    for i in range(1, bounds.shape[0]):
        if bounds[i] < bounds[i - 1]:
            return False
    return True


_PARALLEL = threading.Lock()  # one parallel GEMV at a time: numba's fallback thread pool (workqueue, where
# OpenMP is missing) aborts the process on concurrent launches; the cores are busy with one anyway
_THREAD_STATE = threading.local()  # numba's thread count and chunk size are per calling thread


def gemv_tasks(rows: np.ndarray, x: PreparedRows, out: np.ndarray, out_col: int, bounds: np.ndarray,
               threads: int) -> None:
    """out[:, out_col + c] = the GEMV of weight rows c of `rows` for bounds[0] <= c < bounds[-1], the column
    ranges bounds[t]..bounds[t+1] handed out one at a time (numba's parallel chunk size 1) to `threads` of
    numba's threads as they come free (a core slowed by other work takes fewer). One launch costs a few
    microseconds, against ~100 for a hand-off to Python threads: a decoding step of the default model runs
    121 GEMVs of 0.2-1.9 MB. Sets numba's thread count and chunk size for the calling thread (both are
    per thread; numba's own setters cost microseconds, so they run only when the count changes)."""
    if not (isinstance(bounds, np.ndarray) and bounds.dtype == np.int64 and bounds.ndim == 1 and len(bounds) >= 2
            and bounds.flags.c_contiguous and _increasing(bounds)):
        raise UsageError(f"column bounds {bounds!r} are not an increasing int64 array")
    c0, c1 = int(bounds[0]), int(bounds[-1])
    _check(rows, x, out, out_col, c0, c1)
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    with _PARALLEL:
        if getattr(_THREAD_STATE, "threads", None) != threads:
            numba.set_num_threads(threads)
            numba.set_parallel_chunksize(1)
            _THREAD_STATE.threads = threads
        if x.grouped:
            _row_groups_tasks(rows, x.xt, x.xs_t, x.n_rows, out, out_col - c0, bounds, F16_TO_F32)
        else:
            _few_rows_tasks(rows, x.xq, x.x16, x.xs, out, out_col - c0, bounds, F16_TO_F32)


def q8_gemv(rows: np.ndarray, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """refspec.spec.q8_gemv for weights given as GGUF rows (int8 [N, nb*34]): float32 [R, N], one thread."""
    x = PreparedRows(xq, xd)
    out = np.empty((x.n_rows, rows.shape[0]), np.float32)
    gemv_columns(rows, x, out, 0, 0, rows.shape[0])
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) both loop orders and their threaded runs, on a one-block matrix."""
    rows = np.zeros((1, BLOCK_BYTES), np.int8)
    for n_rows in (1, FEW_ROWS + 1):
        x = PreparedRows(np.zeros((n_rows, QK8_0), np.int8), np.zeros((n_rows, 1), np.float16))
        out = np.empty((n_rows, 1), np.float32)
        gemv_columns(rows, x, out, 0, 0, 1)
        gemv_tasks(rows, x, out, 0, np.array([0, 1], np.int64), 1)
