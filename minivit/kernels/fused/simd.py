"""Runs of W values as one numba value, held in SIMD registers: the lane kernels' vocabulary.

``minivit/kernels/fused/attention.py`` computes one product for W images at
once, each image's value in its own lane. LLVM does not keep a loop's
running sums in registers when it cannot prove that the arrays do not
overlap (numba cannot tell it), so those kernels write the W-lane values as
values of their own: a ``Lanes`` is an LLVM vector of W floats, loaded from
and stored to a 1-D contiguous array at an element offset, and combined
with + and * (``fma(a, b, c)`` = a * b + c with one rounding). No
arithmetic happens here beyond those operations; the math is the kernels'.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

W = 8   # lanes: one AVX register of float32 (two of float64)


class Lanes(types.Type):
    """W values of one float dtype, in one SIMD value."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Lanes{W}({dtype})")


@register_model(Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type,
                         ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), W))


def _pointer(context, builder, array_type, array, offset):
    data = context.make_array(array_type)(context, builder, array).data
    vector = ir.VectorType(context.get_value_type(array_type.dtype), W)
    return builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())


def _is_float_array(a):
    return isinstance(a, types.Array) and isinstance(a.dtype, types.Float) and a.ndim == 1


@intrinsic
def load(typingctx, array, offset):
    """array[offset:offset + W] (a 1-D contiguous array; not bounds-checked)."""
    if not (_is_float_array(array) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(pointer, align=signature.args[0].dtype.bitwidth // 8)
    return Lanes(array.dtype)(array, offset), codegen


@intrinsic
def store(typingctx, array, offset, value):
    """array[offset:offset + W] = value."""
    if not (_is_float_array(array) and isinstance(value, Lanes)
            and value.dtype == array.dtype):
        return None

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], pointer, align=signature.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(array, offset, value), codegen


@intrinsic
def splat(typingctx, x):
    """x in every lane."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(args[0].type, W)
        empty = ir.Constant(vector, ir.Undefined)
        first = builder.insert_element(empty, args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(first, empty,
                                      ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))
    return Lanes(x)(x), codegen


def _elementwise(instruction):
    @intrinsic
    def operation(typingctx, a, b):
        if not (isinstance(a, Lanes) and a == b):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, instruction)(args[0], args[1])
        return a(a, b), codegen
    return operation


add = _elementwise("fadd")
sub = _elementwise("fsub")
mul = _elementwise("fmul")
div = _elementwise("fdiv")


@intrinsic
def maximum(typingctx, a, b):
    """The larger of a and b in each lane; a NaN lane gives the other value
    (LLVM's maxnum), so a kernel that takes a row's maximum with it must let
    a NaN through its other steps."""
    if not (isinstance(a, Lanes) and a == b):
        return None

    def codegen(context, builder, signature, args):
        vector = args[0].type
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 2),
            f"llvm.maxnum.v{W}f{a.dtype.bitwidth}")
        return builder.call(function, args)
    return a(a, b), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, rounded once."""
    if not (isinstance(a, Lanes) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        vector = args[0].type
        name = f"llvm.fma.v{W}f{a.dtype.bitwidth}"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), name)
        return builder.call(function, args)
    return a(a, b, c), codegen


# An 8 x 8 transpose in three rounds of shuffles (pairs of rows, then pairs
# of pairs, then halves), as in every SIMD matrix transpose; each round is
# one instruction per row on AVX.
_ROUNDS = (
    ((0, 1, (0, 8, 1, 9, 4, 12, 5, 13)), (0, 1, (2, 10, 3, 11, 6, 14, 7, 15)),
     (2, 3, (0, 8, 1, 9, 4, 12, 5, 13)), (2, 3, (2, 10, 3, 11, 6, 14, 7, 15)),
     (4, 5, (0, 8, 1, 9, 4, 12, 5, 13)), (4, 5, (2, 10, 3, 11, 6, 14, 7, 15)),
     (6, 7, (0, 8, 1, 9, 4, 12, 5, 13)), (6, 7, (2, 10, 3, 11, 6, 14, 7, 15))),
    ((0, 2, (0, 1, 8, 9, 4, 5, 12, 13)), (0, 2, (2, 3, 10, 11, 6, 7, 14, 15)),
     (1, 3, (0, 1, 8, 9, 4, 5, 12, 13)), (1, 3, (2, 3, 10, 11, 6, 7, 14, 15)),
     (4, 6, (0, 1, 8, 9, 4, 5, 12, 13)), (4, 6, (2, 3, 10, 11, 6, 7, 14, 15)),
     (5, 7, (0, 1, 8, 9, 4, 5, 12, 13)), (5, 7, (2, 3, 10, 11, 6, 7, 14, 15))),
    ((0, 4, (0, 1, 2, 3, 8, 9, 10, 11)), (1, 5, (0, 1, 2, 3, 8, 9, 10, 11)),
     (2, 6, (0, 1, 2, 3, 8, 9, 10, 11)), (3, 7, (0, 1, 2, 3, 8, 9, 10, 11)),
     (0, 4, (4, 5, 6, 7, 12, 13, 14, 15)), (1, 5, (4, 5, 6, 7, 12, 13, 14, 15)),
     (2, 6, (4, 5, 6, 7, 12, 13, 14, 15)), (3, 7, (4, 5, 6, 7, 12, 13, 14, 15))),
)


@intrinsic
def transpose8(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride):
    """dst[dst_offset + j dst_stride + i] = src[src_offset + i src_stride + j]
    for i, j < 8: an 8 x 8 block copied transposed, offsets and strides in
    elements of the arrays' data (any layout; not bounds-checked)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and isinstance(src.dtype, types.Float)):
        return None
    assert W == 8

    def codegen(context, builder, signature, args):
        src_type, _, _, dst_type = signature.args[:4]
        src_data = context.make_array(src_type)(context, builder, args[0]).data
        dst_data = context.make_array(dst_type)(context, builder, args[3]).data
        vector = ir.VectorType(context.get_value_type(src_type.dtype), 8)
        align = src_type.dtype.bitwidth // 8
        rows = []
        for i in range(8):
            at = builder.add(args[1], builder.mul(args[2], ir.Constant(args[2].type, i)))
            pointer = builder.bitcast(builder.gep(src_data, [at]), vector.as_pointer())
            rows.append(builder.load(pointer, align=align))
        for round_ in _ROUNDS:
            rows = [builder.shuffle_vector(rows[a], rows[b],
                                           ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))
                    for a, b, mask in round_]
        for j in range(8):
            at = builder.add(args[4], builder.mul(args[5], ir.Constant(args[5].type, j)))
            pointer = builder.bitcast(builder.gep(dst_data, [at]), vector.as_pointer())
            builder.store(rows[j], pointer, align=align)
        return context.get_dummy_value()
    sig = types.none(src, src_offset, src_stride, dst, dst_offset, dst_stride)
    return sig, codegen
