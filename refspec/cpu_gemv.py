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

Two loop orders, the same bits. Few activation rows (a decoding step, a short verify pass: up to FEW_ROWS):
eight columns at a time, each weight block read once and dotted with the rows two at a time
(`_columns_few_rows`: pmaddwd per column, the eight columns' partial sums reduced together into one vector of
eight dots, so the scaling and the lane add run eight columns wide).
More rows (a prompt or a verify pass): the activations are laid out once as int16 pairs [block, row group, pair,
8 rows, 2] (`prepare_rows`); a tile of 16 columns goes block by block, its weight blocks widened to int16 once,
and each row group's pair vectors stay in registers while four columns' weight pairs are broadcast from memory
against them (`_columns_row_groups`: column tile -> block -> row group -> 4 columns -> 16 pairs, in two halves).

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
from refspec.model import QK8_0

BLOCK_BYTES = 34  # a GGUF Q8_0 block: fp16 scale, then 32 int8 quants
ROW_GROUP = 8  # activation rows per vector of dots: 8 int32 lanes fill one 256-bit register
FEW_ROWS = 5  # up to this many rows the few-rows loop order is the faster (tests/results/cpu_pass_rows_few_rows_*.json)
TILE_COLUMNS = 16  # output columns whose lanes [32, 16, rows] stay in cache while the blocks go by
COLUMNS_PER_CALL = 4  # columns one row-group routine call takes (4 dot vectors + 8 activation vectors in registers)
COLUMN_GROUP = 8  # columns whose dots one call of the few-rows block routine reduces together (8 int32 lanes)
PREFETCH_AHEAD = 256  # bytes ahead in a weight row that the row-groups loop asks for (128 to 512 measured alike)

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


def _row_group_half(half: int):
    """An intrinsic for pairs 8*half .. 8*half+7 of one weight block, COLUMNS_PER_CALL columns and one group
    of 8 activation rows. Column i's 32 weights are int16 at w16[w_at + 32 i] (its scale sc[sc_at + i]); the
    group's quants are int16 pairs at xt[x_at] ([16 pairs, 8 rows, 2], prepare_rows). Each weight pair is
    broadcast from memory and multiplied with the group's pair vector (pmaddwd: 8 rows' two products summed),
    the int32 dots of the first half carried to the second through acc (8 x COLUMNS_PER_CALL int32). The
    second half then adds lanes[lane_at + i * lane_stride + row] += (wd_i * xd_row) * float(dot).

    Half the pairs per call: the 8 activation vectors of a half stay in registers while the columns' weights
    go by (with all 16 pairs LLVM loaded them all first and spilled them)."""

    @intrinsic
    def half_block(typingctx, w16, w_at, xt, x_at, acc, sc, sc_at, xs, xs_at, lanes, lane_at, lane_stride):
        if not (_is_c_array(w16, types.int16) and _is_c_array(xt, types.int16) and _is_c_array(acc, types.int32)
                and _is_c_array(sc, types.float32) and _is_c_array(xs, types.float32)
                and _is_c_array(lanes, types.float32)):
            return None

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            v = [context.cast(builder, value, ty, types.int64) if isinstance(ty, types.Integer) else value
                 for value, ty in zip(args, signature.args)]
            w_at, x_at, sc_at, xs_at, lane_at, lane_stride = v[1], v[3], v[6], v[8], v[10], v[11]

            def pointer(index, offset):  # to element `offset` of array argument `index`
                return _element_pointer(context, builder, signature.args[index], v[index], offset)

            def plus(base, k):
                return builder.add(base, ir.Constant(i64, k))

            i16x16, i32x16, i32x8 = ir.VectorType(_I16, 16), ir.VectorType(_I32, 16), ir.VectorType(_I32, 8)
            pairs = range(8 * half, 8 * half + 8)
            x = {p: builder.sext(builder.load(_vector_at(builder, pointer(2, plus(x_at, 16 * p)), _I16, 16), align=2),
                                 i32x16) for p in pairs}
            dots = []
            for i in range(COLUMNS_PER_CALL):
                carried = _vector_at(builder, pointer(4, ir.Constant(i64, 8 * i)), _I32, 8)
                dot = ir.Constant(i32x8, None) if half == 0 else builder.load(carried, align=4)
                for p in pairs:
                    word_at = builder.bitcast(pointer(0, plus(w_at, QK8_0 * i + 2 * p)), _I32.as_pointer())
                    pair = builder.bitcast(_splat(builder, builder.load(word_at, align=4), 8), i16x16)  # w[2p], w[2p+1]
                    dot = builder.add(dot, _pair_sums(builder, builder.mul(builder.sext(pair, i32x16), x[p])))
                if half == 0:
                    builder.store(dot, carried, align=4)
                dots.append(dot)
            if half == 1:
                f8 = ir.VectorType(_F32, 8)
                xd = builder.load(_vector_at(builder, pointer(7, xs_at), _F32, 8), align=4)
                for i in range(COLUMNS_PER_CALL):
                    wd = _splat(builder, builder.load(pointer(5, plus(sc_at, i)), align=4), 8)
                    term = builder.fmul(builder.fmul(wd, xd), builder.sitofp(dots[i], f8))  # (wd * xd) * dot
                    at = builder.add(lane_at, builder.mul(lane_stride, ir.Constant(i64, i)))
                    lane = _vector_at(builder, pointer(9, at), _F32, 8)
                    builder.store(builder.fadd(builder.load(lane, align=4), term), lane, align=4)
            return context.get_dummy_value()

        return types.void(w16, w_at, xt, x_at, acc, sc, sc_at, xs, xs_at, lanes, lane_at, lane_stride), codegen

    return half_block


_row_group_first_half, _row_group_second_half = _row_group_half(0), _row_group_half(1)


@intrinsic
def _widen(typingctx, w, w_at, w16, w16_at):
    """w16[w16_at .. +31] = the 32 int8 at w's flat element w_at, as int16."""
    if not (_is_c_array(w, types.int8) and _is_c_array(w16, types.int16)):
        return None

    def codegen(context, builder, signature, args):
        source = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        target = _element_pointer(context, builder, signature.args[2], args[2], args[3])
        wide = builder.sext(builder.load(_vector_at(builder, source, _I8, 32), align=1), ir.VectorType(_I16, 32))
        builder.store(wide, _vector_at(builder, target, _I16, 32), align=2)
        return context.get_dummy_value()

    return types.void(w, w_at, w16, w16_at), codegen


def _prefetch(builder, pointer):
    """A hint to fetch the cache line at `pointer` (read, keep in every level). The few-rows loop asks, at
    each block, for the same block of the next eight columns: eight short interleaved streams (a row of the
    default model is 612 bytes) are too short for the hardware prefetcher to follow, and without the hint a
    matrix larger than the caches ran at half the speed."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                        "llvm.prefetch.p0i8")
    builder.call(fn, [builder.bitcast(pointer, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


@intrinsic
def _prefetch_ahead(typingctx, w, at):
    """A prefetch hint for the cache line PREFETCH_AHEAD bytes past w's flat element `at` (int8; a hint
    never faults, past the end included)."""
    if not _is_c_array(w, types.int8):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        _prefetch(builder, builder.gep(pointer, [ir.Constant(ir.IntType(64), PREFETCH_AHEAD)]))
        return context.get_dummy_value()

    return types.void(w, at), codegen


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
    """out[r, out_col + c] for c in c0..c1-1 and every row r (up to FEW_ROWS): eight columns at a time, each
    weight block read once and dotted with the rows two at a time (then the odd one); the columns left over
    one at a time. Rows are independent sums, so the order of the pairs changes no bit."""
    n_rows, nb = xs.shape
    k = nb * QK8_0
    row_bytes = rows.shape[1]
    lanes = np.zeros((n_rows, 32, COLUMN_GROUP), np.float32)
    stop = c0 + (c1 - c0) // COLUMN_GROUP * COLUMN_GROUP
    for t0 in range(c0, stop, COLUMN_GROUP):
        lanes[:] = 0
        w_at = t0 * row_bytes + 2
        if n_rows == 1:  # (separate loops: LLVM merges the two routines' loads badly inside one)
            for b in range(nb):
                _columns_block_1_row(rows, w_at + b * BLOCK_BYTES, row_bytes, x16, b * QK8_0, k, f16, xs, b, nb,
                                     lanes, (b & 31) * COLUMN_GROUP, 32 * COLUMN_GROUP)
        else:
            pairs = n_rows // 2
            for b in range(nb):
                for p in range(pairs):
                    r = 2 * p
                    _columns_block_2_rows(rows, w_at + b * BLOCK_BYTES, row_bytes, x16, r * k + b * QK8_0, k, f16,
                                          xs, r * nb + b, nb, lanes, (r * 32 + (b & 31)) * COLUMN_GROUP,
                                          32 * COLUMN_GROUP)
                if n_rows & 1:
                    r = n_rows - 1
                    _columns_block_1_row(rows, w_at + b * BLOCK_BYTES, row_bytes, x16, r * k + b * QK8_0, k, f16,
                                         xs, r * nb + b, nb, lanes, (r * 32 + (b & 31)) * COLUMN_GROUP,
                                         32 * COLUMN_GROUP)
        for r in range(n_rows):  # the halving sum of each row's 32 lanes, eight columns at once
            width = 16
            while width >= 1:
                for i in range(width):
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
    """out[r, out_col + c] for c in c0..c1-1 and rows r < n_rows, from prepare_rows' layout: a tile of
    TILE_COLUMNS columns at a time, block by block (the tile's weight blocks widened to int16 once per block),
    then every row group, COLUMNS_PER_CALL columns per routine call."""
    nb, groups = xt.shape[0], xt.shape[1]
    padded = groups * ROW_GROUP
    row_bytes = rows.shape[1]
    group_stride = QK8_0 // 2 * ROW_GROUP * 2  # int16 values per row group of one block
    # lanes [32, tile column, row]: one lane's sums for the whole tile are contiguous (laid out [column, 32,
    # row], a lane's columns sat 8 KB apart, on the same few L1 sets, and the loop ran ~10 % slower)
    lanes = np.zeros((32, TILE_COLUMNS, padded), np.float32)
    w16 = np.zeros((TILE_COLUMNS, QK8_0), np.int16)
    sc = np.zeros(TILE_COLUMNS, np.float32)
    carried = np.zeros(COLUMNS_PER_CALL * ROW_GROUP, np.int32)
    for t0 in range(c0, c1, TILE_COLUMNS):
        width = min(TILE_COLUMNS, c1 - t0)
        calls = (width + COLUMNS_PER_CALL - 1) // COLUMNS_PER_CALL
        lanes[:] = 0
        w16[:] = 0  # columns past the tile's width: zeros, their lanes unread
        sc[:] = 0
        for b in range(nb):
            for c in range(width):
                w_at = (t0 + c) * row_bytes + b * BLOCK_BYTES
                sc[c] = _scale(rows[t0 + c, b * BLOCK_BYTES], rows[t0 + c, b * BLOCK_BYTES + 1], f16)
                _widen(rows, w_at + 2, w16, c * QK8_0)
                _prefetch_ahead(rows, w_at)  # sixteen rows read block by block: too many streams to be guessed
            lane_at = (b & 31) * TILE_COLUMNS * padded
            for g in range(groups):
                x_at, xs_at = (b * groups + g) * group_stride, b * padded + g * ROW_GROUP
                for k in range(calls):
                    at = lane_at + COLUMNS_PER_CALL * k * padded + g * ROW_GROUP
                    _row_group_first_half(w16, COLUMNS_PER_CALL * k * QK8_0, xt, x_at, carried, sc,
                                          COLUMNS_PER_CALL * k, xs_t, xs_at, lanes, at, padded)
                    _row_group_second_half(w16, COLUMNS_PER_CALL * k * QK8_0, xt, x_at, carried, sc,
                                           COLUMNS_PER_CALL * k, xs_t, xs_at, lanes, at, padded)
        width_of_lanes = 16  # the halving sum, every column and row of the tile at once (the same additions)
        while width_of_lanes >= 1:
            for k in range(width_of_lanes):
                for c in range(width):
                    for r in range(n_rows):
                        lanes[k, c, r] += lanes[k + width_of_lanes, c, r]
            width_of_lanes //= 2
        for c in range(width):
            for r in range(n_rows):
                out[r, out_col + t0 + c] = lanes[0, c, r]


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


_PARALLEL = threading.Lock()  # one parallel launch at a time: numba's fallback thread pool (workqueue, where
# OpenMP is missing) aborts the process on concurrent launches; the cores are busy with one anyway
_THREAD_STATE = threading.local()  # numba's thread count and chunk size are per calling thread


def max_threads() -> int:
    """The most threads numba's parallel loops run here (NUMBA_NUM_THREADS: every core unless set)."""
    return numba.config.NUMBA_NUM_THREADS


class numba_threads:
    """The context of a launch of numba's parallel loops from this thread: one launch at a time, `threads`
    threads (None: as many as this thread asked for last, else all of numba's) and chunk size 1 (iterations
    handed out one at a time as threads come free: a core slowed by other work takes fewer). numba's own
    setters cost microseconds, so they run only when the count changes."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __enter__(self):
        _PARALLEL.acquire()
        threads = self.threads or getattr(_THREAD_STATE, "threads", None) or numba.config.NUMBA_NUM_THREADS
        threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
        if getattr(_THREAD_STATE, "threads", None) != threads:
            numba.set_num_threads(threads)
            numba.set_parallel_chunksize(1)
            _THREAD_STATE.threads = threads
        return self

    def __exit__(self, *exc):
        _PARALLEL.release()


def gemv_tasks(rows: np.ndarray, x: PreparedRows, out: np.ndarray, out_col: int, bounds: np.ndarray,
               threads: int) -> None:
    """out[:, out_col + c] = the GEMV of weight rows c of `rows` for bounds[0] <= c < bounds[-1], the column
    ranges bounds[t]..bounds[t+1] handed out to `threads` of numba's threads (numba_threads). One launch costs
    a few microseconds, against ~100 for a hand-off to Python threads: a decoding step of the default model
    runs 121 GEMVs of 0.2-1.9 MB."""
    if not (isinstance(bounds, np.ndarray) and bounds.dtype == np.int64 and bounds.ndim == 1 and len(bounds) >= 2
            and bounds.flags.c_contiguous and _increasing(bounds)):
        raise UsageError(f"column bounds {bounds!r} are not an increasing int64 array")
    c0, c1 = int(bounds[0]), int(bounds[-1])
    _check(rows, x, out, out_col, c0, c1)
    with numba_threads(threads):
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
