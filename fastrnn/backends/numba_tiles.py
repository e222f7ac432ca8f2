"""Register-tiled products of small matrices for the Numba kernels.

The fused train step and predict multiply matrices of a few dozen rows and
columns at every time step.  A BLAS call copies (packs) its operands first,
which at these sizes costs about as much as the product, and a plain Numba loop
nest keeps the result in memory.  :func:`tiled_product` instead keeps a tile of
R rows by V vectors of the result in vector registers while the contraction
runs, as the C backend's ``tile()`` does; the tile is written in LLVM IR with
explicit vector types because Numba has no other way to hold a block of
accumulators in registers.

Operands are addressed as in the C backend: a pointer to float32 and element
offsets.  Results and right-hand factors have rows of a "padded" width Hp, H
rounded up to a whole number of vectors of ``LANES`` floats; the padding
columns of every right-hand factor are kept at zero, so those of every result
stay zero too and no loop needs a remainder.

A factor of a product is the tuple made by :func:`factor`: element (r, k) of
its left-hand side A lies at ``a[a_at + r * a_row + k * a_col]`` (so A or its
transpose is read where it lies) and row k of its right-hand side at
``b[b_at + k * ldb]``.

Each element of a result is accumulated in a fixed order: its start value,
then k = 0 .. k_len - 1 of the first factor, then of the second, each term a
fused multiply-add.  The C backend uses the same order, so the two agree to
rounding (to the bit where no activation rounds differently).

:func:`tiled_product_skipping` can leave out the terms of a first factor whose
left-hand elements are exactly zero in every row of a tile, as in MNIST's
images, where four pixels in five are 0: the inputs' zero masks, made once per
batch part or chunk, say which.  A term left out would have added a zero, so
only the sign of a zero result can change.

Shape letters: B batch, T time steps, D input features, H hidden units, K
output units.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

from fastrnn.backends._jit import kernel, typed_kernel


def compile_features():
    """The CPU features Numba compiles for, as a set of names like ``"avx2"``.

    Numba's configured features (``NUMBA_CPU_FEATURES``) win; otherwise those
    of the host as Numba reads them, which drops AVX when ``NUMBA_ENABLE_AVX``
    is off.
    """
    features = config.CPU_FEATURES
    if features is None:
        try:
            from numba.core.codegen import get_host_cpu_features
        except ImportError:  # an older or newer layout of Numba's internals
            from llvmlite.binding import get_host_cpu_features as host

            features = host().flatten()
        else:
            features = get_host_cpu_features()
    return {name[1:] for name in features.split(",") if name.startswith("+")}


_FEATURES = compile_features()

# Floats per vector.  Where AVX-512 is available a 16-float FMA costs the same
# as an 8-float one on current cores, so it doubles the throughput; elsewhere
# LLVM splits 8-float vectors into what the target has (two SSE registers
# without AVX).  The choice is part of the compiled code, and Numba's on-disk
# cache is keyed by the CPU features too, so a cached kernel never meets the
# other width.
LANES = 16 if "avx512f" in _FEATURES else 8

# Rows and vectors of the largest tile, as in C.  With AVX-512's 32 vector
# registers a tile of 6 rows by 4 vectors keeps its 24 accumulators, the 6
# broadcast row factors of one k and a right-hand vector in registers; with 16
# registers, 2 rows.
TILE_ROWS = 6 if LANES == 16 else 2
TILE_VECS = 4

# The constraint that pins a vector to a register (see _tile) is x86's, and
# needs a register as wide as the vector: without AVX, LLVM splits an 8-float
# vector over two SSE registers and cannot pin it.
_PIN_VECTORS = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and (
    "avx512f" in _FEATURES if LANES == 16 else "avx" in _FEATURES
)

# llvm.fma is one instruction where the CPU has FMA but a libm call per lane
# where it has not; llvm.fmuladd fuses exactly where fusing is fast, as a C
# compiler contracting a * b + c does.
_FMA_NAME = "llvm.fma" if "fma" in _FEATURES else "llvm.fmuladd"

# Where the accumulators of a tile start.
FROM_ZERO, FROM_ROW, FROM_C = 0, 1, 2

# Scratch is carved into buffers whose offsets are multiples of this many
# floats (64 bytes), so that a vector of a padded row never straddles a cache
# line.
ALIGN = 16


@kernel
def padded(n):
    """n rounded up to a whole number of vectors of LANES floats."""
    return (n + LANES - 1) // LANES * LANES


@kernel
def aligned_size(n):
    """n rounded up to a multiple of ALIGN floats."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


# --------------------------------------------------------------------------
# pointers


_FLOAT_POINTER = types.CPointer(types.float32)
_INT_POINTER = types.CPointer(types.int64)
_MASK_POINTER = types.CPointer(types.uint64)


@intrinsic
def address(typingctx, source):
    """Pointer to an array's first element, or float32 at an integer address.

    The pointer does not keep the array alive: it must be used only while the
    array is (an argument of the calling kernel, or an array it goes on using).
    """
    if isinstance(source, types.Array):

        def from_array(context, builder, signature, arguments):
            array_type = signature.args[0]
            array = context.make_array(array_type)(context, builder, arguments[0])
            return array.data

        return types.CPointer(source.dtype)(source), from_array
    if isinstance(source, types.Integer):

        def from_integer(context, builder, signature, arguments):
            return builder.inttoptr(
                arguments[0], context.get_value_type(signature.return_type)
            )

        return _FLOAT_POINTER(source), from_integer
    return None


# A factor, as factor() makes it; its offsets are int64 whatever literal
# constants a call passes, so that every product shares one compiled
# tiled_product.
FACTOR = types.Tuple(
    (_FLOAT_POINTER, *[types.int64] * 3, _FLOAT_POINTER, *[types.int64] * 3)
)


@typed_kernel(FACTOR(*FACTOR))
def factor(a, a_at, a_row, a_col, b, b_at, ldb, k_len):
    """One factor A B of a tiled product (see the module docstring)."""
    return (a, a_at, a_row, a_col, b, b_at, ldb, k_len)


@typed_kernel(FACTOR(FACTOR, types.int64, types.int64))
def _moved(f, rows, vecs):
    """Factor f for the tile ``rows`` rows down and ``vecs`` vectors right."""
    a, a_at, a_row, a_col, b, b_at, ldb, k_len = f
    return (a, a_at + rows * a_row, a_row, a_col, b, b_at + vecs * LANES, ldb, k_len)


# --------------------------------------------------------------------------
# the tile


def _is_factor(ty):
    return (
        isinstance(ty, types.BaseTuple)
        and len(ty) == 8
        and ty[0] == _FLOAT_POINTER
        and ty[4] == _FLOAT_POINTER
        and all(isinstance(ty[i], types.Integer) for i in (1, 2, 3, 5, 6, 7))
    )


@intrinsic
def _tile(typingctx, c, c_at, ldc, rows, vecs, start, s, s_at, first, second, ks,
          count):  # fmt: skip
    """C tile = start + A1 B1 + A2 B2 for ``rows`` x ``vecs`` vectors of C.

    The tile's element (r, j) lies at c[c_at + r * ldc + j].  Its start is zero
    (FROM_ZERO), the row at s[s_at] in every row (FROM_ROW), or C itself
    (FROM_C).  ``first`` and ``second`` are factors; a k_len of 0 leaves one
    out.  A1 B1 runs over the ``count`` terms k listed in ks, in increasing
    order, or over all of them if count is negative.  rows and vecs are
    run-time values of at most TILE_ROWS and TILE_VECS:
    a switch picks the tile compiled for them, whose accumulators are fixed in
    number and so live in registers.
    """
    integers = (c_at, ldc, rows, vecs, start, s_at)
    if not (
        c == _FLOAT_POINTER
        and s == _FLOAT_POINTER
        and all(isinstance(ty, types.Integer) for ty in integers)
        and _is_factor(first)
        and _is_factor(second)
        and ks == _INT_POINTER
        and isinstance(count, types.Integer)
    ):
        return None
    signature = types.void(
        c, c_at, ldc, rows, vecs, start, s, s_at, first, second, ks, count
    )

    def codegen(context, builder, signature, arguments):
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        vector = ir.VectorType(ir.FloatType(), LANES)
        fma = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vector, [vector] * 3),
            f"{_FMA_NAME}.v{LANES}f32",
        )
        argument_types = signature.args

        def as_intp(value, ty):
            return context.cast(builder, value, ty, types.intp)

        c_ptr, c_at_, ldc_, rows_, vecs_, start_, s_ptr, s_at_ = (
            value if ty == _FLOAT_POINTER else as_intp(value, ty)
            for value, ty in zip(arguments[:8], argument_types[:8])
        )
        ks_ptr = arguments[10]
        count_ = as_intp(arguments[11], argument_types[11])
        has_list = builder.icmp_signed(">=", count_, ir.Constant(intp, 0))
        factors = []
        for value, ty in zip(arguments[8:10], argument_types[8:10]):
            fields = [builder.extract_value(value, i) for i in range(8)]
            factors.append(
                [
                    field if i in (0, 4) else as_intp(field, ty[i])
                    for i, field in enumerate(fields)
                ]
            )

        def const(value):
            return ir.Constant(intp, value)

        def add(*terms):
            total = terms[0]
            for term in terms[1:]:
                total = builder.add(total, term)
            return total

        def vector_at(pointer, at):
            element = builder.gep(pointer, [at])
            return builder.bitcast(element, vector.as_pointer())

        def load_vector(pointer, at):
            # NumPy promises float alignment only; the loads say so.
            return builder.load(vector_at(pointer, at), align=4)

        def pin(value):
            # An empty asm that claims to change the vector makes LLVM keep
            # each B vector in a register from its load to its last FMA, as the
            # C tiles do.  Left to itself, LLVM schedules the loop of a 6-row
            # tile so that it runs about a fifth slower than that of a 5-row
            # one (Zen 5); pinned, the two run at the same rate.
            signature = ir.FunctionType(vector, [vector])
            return builder.asm(signature, "", "=v,0", [value], side_effect=False)

        def splat(scalar):
            lane_0 = builder.insert_element(
                ir.Constant(vector, ir.Undefined), scalar, ir.Constant(i32, 0)
            )
            everywhere = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
            return builder.shuffle_vector(
                lane_0, ir.Constant(vector, ir.Undefined), everywhere
            )

        # One stack slot per accumulator, in the function's entry block, shared
        # by every tile shape; LLVM promotes them to registers, so the loops
        # below carry the accumulators without touching memory.
        slots = [
            [cgutils.alloca_once(builder, vector) for _ in range(TILE_VECS)]
            for _ in range(TILE_ROWS)
        ]

        # A second factor of no terms is left out, so that its loop is not run.
        has_second = builder.icmp_signed("!=", factors[1][7], const(0))
        factor_count = builder.select(has_second, const(2), const(1))

        def c_offset(r, v):
            return add(c_at_, builder.mul(const(r), ldc_), const(v * LANES))

        def emit(R, V):
            # start
            is_zero = builder.icmp_signed("==", start_, const(FROM_ZERO))
            with builder.if_else(is_zero) as (zero, loaded):
                with zero:
                    for r in range(R):
                        for v in range(V):
                            builder.store(ir.Constant(vector, None), slots[r][v])
                with loaded:
                    is_row = builder.icmp_signed("==", start_, const(FROM_ROW))
                    with builder.if_else(is_row) as (from_row, from_c):
                        with from_row:
                            for v in range(V):
                                value = load_vector(s_ptr, add(s_at_, const(v * LANES)))
                                for r in range(R):
                                    builder.store(value, slots[r][v])
                        with from_c:
                            for r in range(R):
                                for v in range(V):
                                    value = load_vector(c_ptr, c_offset(r, v))
                                    builder.store(value, slots[r][v])

            # The contraction, factor by factor, k in order.  One loop body
            # serves both factors, picked at run time: the tile code is linked
            # into every kernel that calls it, so its size is compile time.
            with cgutils.for_range(builder, factor_count, intp=intp) as which:
                is_first = builder.icmp_signed("==", which.index, const(0))
                a, a_at, a_row, a_col, b, b_at, ldb, k_len = (
                    builder.select(is_first, one, two) for one, two in zip(*factors)
                )
                listed = builder.and_(is_first, has_list)
                terms = builder.select(listed, count_, k_len)
                with cgutils.for_range(builder, terms, intp=intp) as loop:
                    with builder.if_else(listed) as (from_list, in_order):
                        with from_list:
                            listed_k = builder.load(builder.gep(ks_ptr, [loop.index]))
                            list_block = builder.block
                        with in_order:
                            order_block = builder.block
                    k = builder.phi(intp)
                    k.add_incoming(listed_k, list_block)
                    k.add_incoming(loop.index, order_block)
                    a_k = add(a_at, builder.mul(k, a_col))
                    row_factors = [
                        splat(builder.load(builder.gep(a, [add(a_k, r_offset)])))
                        for r_offset in (builder.mul(const(r), a_row) for r in range(R))
                    ]
                    b_k = add(b_at, builder.mul(k, ldb))
                    for v in range(V):
                        b_vector = load_vector(b, add(b_k, const(v * LANES)))
                        if _PIN_VECTORS:
                            b_vector = pin(b_vector)
                        for r in range(R):
                            total = builder.call(
                                fma,
                                [row_factors[r], b_vector, builder.load(slots[r][v])],
                            )
                            builder.store(total, slots[r][v])

            # store
            for r in range(R):
                for v in range(V):
                    pointer = vector_at(c_ptr, c_offset(r, v))
                    builder.store(builder.load(slots[r][v]), pointer, align=4)

        builder.function.attributes.add("noinline")
        done = builder.append_basic_block("tile.done")
        shape = add(builder.mul(rows_, const(TILE_VECS + 1)), vecs_)
        switch = builder.switch(shape, done)
        for R in range(1, TILE_ROWS + 1):
            for V in range(1, TILE_VECS + 1):
                block = builder.append_basic_block(f"tile.{R}x{V}")
                switch.add_case(const(R * (TILE_VECS + 1) + V), block)
                builder.position_at_end(block)
                emit(R, V)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return signature, codegen


# How a product's first factor marks the zeros of A (see tiled_product).
NO_ZEROS, ZEROS_BY_ROW, ZEROS_BY_K = 0, 1, 2


@intrinsic
def _lowest_bit(typingctx, bits):
    """Index of the lowest set bit of a uint64 that is not 0."""
    if bits != types.uint64:
        return None

    def codegen(context, builder, signature, arguments):
        i64 = ir.IntType(64)
        count_zeros = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64"
        )
        return builder.call(count_zeros, [arguments[0], ir.Constant(ir.IntType(1), 1)])

    return types.int64(bits), codegen


@intrinsic
def _null(typingctx, like):
    """A null pointer of the type of ``like``'s elements (an array)."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, arguments):
        return ir.Constant(context.get_value_type(pointer), None)

    return pointer(like), codegen


@typed_kernel(
    types.void(
        _FLOAT_POINTER,
        *[types.int64] * 5,
        _FLOAT_POINTER,
        types.int64,
        FACTOR,
        FACTOR,
        _MASK_POINTER,
        types.int64,
        types.int64,
        _INT_POINTER,
    )  # fmt: skip
)
def tiled_product_skipping(c, c_at, ldc, rows, width, start, s, s_at, first, second,
                           zeros, zeros_at, zeros_kind, ks):  # fmt: skip
    """C (rows, width) = start + A1 B1 + A2 B2, tile by tile, skipping zeros of A1.

    C's element (i, j) lies at c[c_at + i * ldc + j]; width is a multiple of
    LANES.  start, s, s_at, first and second are those of :func:`_tile`.

    zeros marks A1's nonzero elements from zeros[zeros_at] (uint64): with
    ZEROS_BY_ROW, bit k of word r is set if A1 (r, k) != 0 (k < 64); with
    ZEROS_BY_K, bit r of word k if A1 (r, k) != 0 (r < 64).  A tile then leaves
    out every term k whose A1 elements are zero in all its rows, which changes
    nothing but the sign of a zero.  ks has room for the k_len of A1 (int64).
    With NO_ZEROS, zeros and ks are not read.
    """
    vecs = width // LANES
    tiles = (rows + TILE_ROWS - 1) // TILE_ROWS
    if tiles == 0:
        return
    k_len = first[7]
    # The rows are dealt out evenly, so that no tile is left with a row or two:
    # 25 rows become 5 tiles of 5, not 4 of 6 and one of 1.
    base = rows // tiles
    extra = rows % tiles
    i = 0
    for t in range(tiles):
        R = base + 1 if t < extra else base
        count = -1
        if zeros_kind == ZEROS_BY_ROW:
            bits = np.uint64(0)
            for r in range(R):
                bits |= zeros[zeros_at + i + r]
            count = 0
            while bits != 0:
                ks[count] = _lowest_bit(bits)
                count += 1
                bits &= bits - np.uint64(1)
        elif zeros_kind == ZEROS_BY_K:
            tile_rows = ((np.uint64(1) << np.uint64(R)) - np.uint64(1)) << np.uint64(i)
            count = 0
            # Without a branch: which terms are zero is unpredictable.
            for k in range(k_len):
                ks[count] = k
                count += (zeros[zeros_at + k] & tile_rows) != 0
        # A tile whose only factor is all zeros leaves C as it is.
        if count == 0 and start == FROM_C and second[7] == 0:
            i += R
            continue
        for v0 in range(0, vecs, TILE_VECS):
            _tile(
                c,
                c_at + i * ldc + v0 * LANES,
                ldc,
                R,
                min(TILE_VECS, vecs - v0),
                start,
                s,
                s_at + v0 * LANES,
                _moved(first, i, v0),
                _moved(second, i, v0),
                ks,
                count,
            )
        i += R


_NO_MASKS = np.empty(0, dtype=np.uint64)
_NO_TERMS = np.empty(0, dtype=np.int64)


@typed_kernel(
    types.void(
        _FLOAT_POINTER, *[types.int64] * 5, _FLOAT_POINTER, types.int64, FACTOR, FACTOR
    )
)
def tiled_product(c, c_at, ldc, rows, width, start, s, s_at, first, second):
    """C (rows, width) = start + A1 B1 + A2 B2, tile by tile, every term.

    The arguments are those of :func:`tiled_product_skipping`.
    """
    tiled_product_skipping(c, c_at, ldc, rows, width, start, s, s_at, first, second,
                           _null(_NO_MASKS), 0, NO_ZEROS, _null(_NO_TERMS))  # fmt: skip


# --------------------------------------------------------------------------
# padded layouts


def _lanes_below(builder, count):
    """The vector of LANES flags that is true in the lanes below ``count``."""
    count_type = count.type
    vector_of = ir.VectorType(count_type, LANES)
    i32 = ir.IntType(32)
    lanes = ir.Constant(vector_of, list(range(LANES)))
    in_lane_0 = builder.insert_element(
        ir.Constant(vector_of, ir.Undefined), count, ir.Constant(i32, 0)
    )
    counts = builder.shuffle_vector(
        in_lane_0,
        ir.Constant(vector_of, ir.Undefined),
        ir.Constant(ir.VectorType(i32, LANES), [0] * LANES),
    )
    return builder.icmp_signed("<", lanes, counts)


def _masked_move(store_masked):
    """An intrinsic moving one vector from src[src_at] to dst[dst_at].

    Only the first ``count`` lanes are read (``store_masked`` false, the rest of
    the vector written as zeros) or written (``store_masked`` true, a whole
    vector read).  Row copies of a few dozen floats are too short for LLVM's
    vector loops, which run 64 floats at a time and leave the rest to a scalar
    loop; these move a padded row in whole vectors.
    """

    def typer(typingctx, dst, dst_at, src, src_at, count):
        if not (dst == _FLOAT_POINTER and src == _FLOAT_POINTER):
            return None
        signature = types.void(dst, dst_at, src, src_at, count)

        def codegen(context, builder, signature, arguments):
            dst_ptr, dst_at_, src_ptr, src_at_, count_ = arguments
            i32 = ir.IntType(32)
            vector = ir.VectorType(ir.FloatType(), LANES)
            mask_type = ir.VectorType(ir.IntType(1), LANES)
            vector_pointer = vector.as_pointer()
            at_types = signature.args[1], signature.args[3], signature.args[4]
            dst_at_, src_at_, count_ = (
                context.cast(builder, value, ty, types.intp)
                for value, ty in zip((dst_at_, src_at_, count_), at_types)
            )
            mask = _lanes_below(builder, count_)
            source = builder.bitcast(builder.gep(src_ptr, [src_at_]), vector_pointer)
            target = builder.bitcast(builder.gep(dst_ptr, [dst_at_]), vector_pointer)
            align = ir.Constant(i32, 4)
            if store_masked:
                store = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(
                        ir.VoidType(), [vector, vector_pointer, i32, mask_type]
                    ),
                    f"llvm.masked.store.v{LANES}f32.p0",
                )
                value = builder.load(source, align=4)
                builder.call(store, [value, target, align, mask])
            else:
                load = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(vector, [vector_pointer, i32, mask_type, vector]),
                    f"llvm.masked.load.v{LANES}f32.p0",
                )
                zeros = ir.Constant(vector, None)
                value = builder.call(load, [source, align, mask, zeros])
                builder.store(value, target, align=4)
            return context.get_dummy_value()

        return signature, codegen

    return intrinsic(typer)


_load_padded = _masked_move(store_masked=False)
_store_first = _masked_move(store_masked=True)


@kernel
def pad_columns(dst, src, width):
    """dst (rows * width,) = src (rows, cols) in rows of ``width``, zero past cols.

    width is a multiple of LANES.
    """
    rows, cols = src.shape
    if cols > 1 and src.strides[1] != 4:
        # A transposed source, read down its columns: no vectors to move.
        for i in range(rows):
            for j in range(cols):
                dst[i * width + j] = src[i, j]
            for j in range(cols, width):
                dst[i * width + j] = 0
        return
    row = src.strides[0] // 4
    p_dst = address(dst)
    p_src = address(src)
    for i in range(rows):
        for j in range(0, width, LANES):
            count = min(max(cols - j, 0), LANES)
            _load_padded(p_dst, i * width + j, p_src, i * row + j, count)


@kernel
def unpad_columns(dst, src, width):
    """dst (rows, cols) = the first cols of each row of ``width`` in src (flat).

    dst's rows are contiguous; width is a multiple of LANES.
    """
    rows, cols = dst.shape
    row = dst.strides[0] // 4
    p_dst = address(dst)
    p_src = address(src)
    for i in range(rows):
        for j in range(0, cols, LANES):
            count = min(cols - j, LANES)
            _store_first(p_dst, i * row + j, p_src, i * width + j, count)


@kernel
def first_aligned(buffer):
    """Index of the first element of ``buffer`` (float32, 1-D) on a 64-byte line."""
    misplaced = buffer.ctypes.data // 4 % ALIGN
    return (ALIGN - misplaced) % ALIGN


@kernel
def packed_rnn_size(D, H):
    """Floats of the padded W (D, Hp), U (H, Hp), U^T (H, Hp) and b (Hp,)."""
    Hp = padded(H)
    return aligned_size(D * Hp) + 2 * aligned_size(H * Hp) + aligned_size(Hp)


@kernel
def pack_rnn(packed, W, U, b, transpose):
    """Lay W, U, b (and U^T if ``transpose``) out in padded rows in ``packed``.

    packed (packed_rnn_size(D, H),) out, from an aligned start
    W (D, H), U (H, H), b (H,)
    Returns the offsets of W, U, U^T and b in packed.
    """
    D, H = W.shape
    Hp = padded(H)
    W_at = 0
    U_at = W_at + aligned_size(D * Hp)
    U_T_at = U_at + aligned_size(H * Hp)
    b_at = U_T_at + aligned_size(H * Hp)
    pad_columns(packed[W_at:], W, Hp)
    pad_columns(packed[U_at:], U, Hp)
    pad_columns(packed[b_at:], b.reshape(1, H), Hp)
    if transpose:
        pad_columns(packed[U_T_at:], U.T, Hp)
    return W_at, U_at, U_T_at, b_at


@kernel
def packed_dense_size(H, K):
    """Floats of the padded V (H, Kp), V^T (K, Hp) and c (Kp,)."""
    Hp, Kp = padded(H), padded(K)
    return aligned_size(H * Kp) + aligned_size(K * Hp) + aligned_size(Kp)


@kernel
def pack_dense(packed, V, c, transpose):
    """Lay V, c (and V^T if ``transpose``) out in padded rows in ``packed``.

    packed (packed_dense_size(H, K),) out, from an aligned start
    V (H, K), c (K,)
    Returns the offsets of V, V^T and c in packed.
    """
    H, K = V.shape
    Hp, Kp = padded(H), padded(K)
    V_at = 0
    V_T_at = V_at + aligned_size(H * Kp)
    c_at = V_T_at + aligned_size(K * Hp)
    pad_columns(packed[V_at:], V, Kp)
    pad_columns(packed[c_at:], c.reshape(1, K), Kp)
    if transpose:
        pad_columns(packed[V_T_at:], V.T, Hp)
    return V_at, V_T_at, c_at


@kernel
def tiled_dense_forward(logits, wide, hs, h_at, packed, offsets, H):
    """logits (n, K) = h (n, Hp) V + c, through ``wide`` (n, Kp) scratch.

    h lies in hs (flat) from h_at; packed and offsets are from pack_dense.
    """
    n, K = logits.shape
    Hp, Kp = padded(H), padded(K)
    V_at, _, c_at = offsets
    p_packed = address(packed)
    p_wide = address(wide)
    hidden = factor(address(hs), h_at, Hp, 1, p_packed, V_at, Kp, H)
    none = factor(p_wide, 0, 0, 0, p_wide, 0, 0, 0)
    tiled_product(p_wide, 0, Kp, n, Kp, FROM_ROW, p_packed, c_at, hidden, none)
    unpad_columns(logits, wide, Kp)


# --------------------------------------------------------------------------
# zero masks of the inputs

# Inputs of at most this many features get zero masks (one bit per feature).
MASK_FEATURES = 64


@intrinsic
def scan_row(typingctx, x, at, D):
    """(nonzero, bad) of the D contiguous floats from x[at], D <= MASK_FEATURES.

    Bit d of nonzero (uint64) is set where x[at + d] != 0 (or is NaN), and bad
    is nonzero if any of the floats is not finite: its exponent bits are all
    ones.  A vector at a time, the last one by a masked load, which here reads
    from memory at a fraction of the rate of a plain load.
    """
    if not (x == _FLOAT_POINTER and isinstance(at, types.Integer)):
        return None
    if not isinstance(D, types.Integer):
        return None
    result = types.UniTuple(types.uint64, 2)

    def codegen(context, builder, signature, arguments):
        intp = context.get_value_type(types.intp)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vector = ir.VectorType(ir.FloatType(), LANES)
        lanes_mask = ir.VectorType(ir.IntType(1), LANES)
        as_bits = ir.IntType(LANES)
        x_ptr = arguments[0]
        at_, D_ = (
            context.cast(builder, value, ty, types.intp)
            for value, ty in zip(arguments[1:], signature.args[1:])
        )
        masked_load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vector, [vector.as_pointer(), i32, lanes_mask, vector]),
            f"llvm.masked.load.v{LANES}f32.p0",
        )
        nonzero = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
        bad = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
        exponent = ir.Constant(ir.VectorType(i32, LANES), [0x7F800000] * LANES)
        zeros = ir.Constant(vector, None)
        for first in range(0, MASK_FEATURES, LANES):
            here = ir.Constant(intp, first)
            left = builder.sub(D_, here)
            with builder.if_then(builder.icmp_signed(">", left, ir.Constant(intp, 0))):
                source = builder.bitcast(
                    builder.gep(x_ptr, [builder.add(at_, here)]), vector.as_pointer()
                )
                whole = builder.icmp_signed(">=", left, ir.Constant(intp, LANES))
                with builder.if_else(whole) as (plain, masked):
                    with plain:
                        loaded = builder.load(source, align=4)
                        plain_block = builder.block
                    with masked:
                        in_row = _lanes_below(builder, left)
                        align = ir.Constant(i32, 4)
                        partial = builder.call(
                            masked_load, [source, align, in_row, zeros]
                        )
                        masked_block = builder.block
                values = builder.phi(vector)
                values.add_incoming(loaded, plain_block)
                values.add_incoming(partial, masked_block)

                def lanes_to_word(flags, shift):
                    word = builder.zext(builder.bitcast(flags, as_bits), i64)
                    return builder.shl(word, ir.Constant(i64, shift))

                is_nonzero = builder.fcmp_unordered("!=", values, zeros)
                builder.store(
                    builder.or_(
                        builder.load(nonzero), lanes_to_word(is_nonzero, first)
                    ),
                    nonzero,
                )
                bits = builder.and_(
                    builder.bitcast(values, ir.VectorType(i32, LANES)), exponent
                )
                not_finite = builder.icmp_unsigned("==", bits, exponent)
                builder.store(
                    builder.or_(builder.load(bad), lanes_to_word(not_finite, 0)), bad
                )
        return context.make_tuple(
            builder, result, [builder.load(nonzero), builder.load(bad)]
        )

    return result(x, at, D), codegen
