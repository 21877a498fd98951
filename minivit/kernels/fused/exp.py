"""exp and erf that compile to SIMD code: the float32 exp and erf of the fused kernels.

Replaces ``math.exp`` / ``math.erf`` inside the fused loops for float32
(float64 keeps the C library's, exact to rounding). The C library's
functions are calls that stop a loop from being vectorised; these are only
multiplications, additions, comparisons, one rounding (LLVM's floor) and one
integer-to-float bit reinterpretation, which LLVM runs on whole SIMD registers.

exp(z) = 2^k exp(r), k = round(z / ln 2), r = z - k ln 2 (ln 2 in two parts,
so r is exact), exp(r) on |r| <= ln2 / 2 by its Taylor polynomial of degree
7 (truncation below 1e-8 relative), 2^k built from its exponent bits.
Beyond float32's range: inf above, 0 below (float32's subnormals are not
produced, an absolute difference below 1.2e-38); NaN stays NaN.
erf: ``minivit.kernels.erf``'s rational form (x P(x^2) / Q(x^2), clamped to
[-4, 4]), the same coefficients.
"""

from __future__ import annotations

import math

from numba import njit, types
from numba.extending import intrinsic, overload

from minivit.kernels.erf import _ERF_P, _ERF_Q

_LOG2E = 1.0 / math.log(2.0)
_LN2_HI = 0.693145751953125               # ln 2 to 16 bits: k * _LN2_HI is exact
_LN2_LO = math.log(2.0) - _LN2_HI
_EXP_MAX32 = 88.72283                      # exp above this overflows float32
_EXP_MIN32 = -87.33654                     # below this float32's result is subnormal


@intrinsic
def _int32_bits_as_float32(typingctx, value):
    """The float32 whose bits are the low 32 bits of the integer ``value``."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], context.get_value_type(types.int32)) \
            if value.bitwidth > 32 else args[0]
        return builder.bitcast(low, context.get_value_type(types.float32))
    return types.float32(value), codegen


@intrinsic
def _floor32(typingctx, value):
    """floor of a float32, as LLVM's own floor: one rounding instruction
    per SIMD register. (numba's numpy.floor is a call to the C library per
    value, which splits a vectorised loop back into scalars; math.floor
    returns an integer, whose int64 conversions AVX2 has no vector
    instruction for.)"""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.floor", [args[0].type])
        return builder.call(fn, [args[0]])
    return types.float32(types.float32), codegen


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _exp32(z):
    t = types.float32
    k = _floor32(z * t(_LOG2E) + t(0.5))
    r = (z - k * t(_LN2_HI)) - k * t(_LN2_LO)
    p = t(1.0 / 5040.0)
    p = p * r + t(1.0 / 720.0)
    p = p * r + t(1.0 / 120.0)
    p = p * r + t(1.0 / 24.0)
    p = p * r + t(1.0 / 6.0)
    p = p * r + t(0.5)
    p = p * r + t(1.0)
    p = p * r + t(1.0)
    kk = min(max(k, t(-126.0)), t(127.0))           # in range for the bits; NaN: any
    scale = _int32_bits_as_float32((types.int32(kk) + 127) << 23)
    e = p * scale
    if k > t(127.0):
        e = e * t(2.0)                              # z just below the overflow: k = 128
    if z > t(_EXP_MAX32):
        e = t(math.inf)
    if z < t(_EXP_MIN32):
        e = t(0.0)
    return e


def exp(z):
    """exp(z) in the fused kernels: ``_exp32`` for float32, math.exp for float64."""
    return math.exp(z)


@overload(exp, inline="always")
def _exp_overload(z):
    if z == types.float32:
        return lambda z: _exp32(z)
    return lambda z: math.exp(z)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _erf32(x):
    t = types.float32
    xc = min(max(x, t(-4.0)), t(4.0))
    if x != x:
        xc = x                                      # NaN stays NaN
    s = xc * xc
    p = t(_ERF_P[6])
    for c in (_ERF_P[5], _ERF_P[4], _ERF_P[3], _ERF_P[2], _ERF_P[1], _ERF_P[0]):
        p = p * s + t(c)
    q = t(_ERF_Q[4])
    for c in (_ERF_Q[3], _ERF_Q[2], _ERF_Q[1], _ERF_Q[0]):
        q = q * s + t(c)
    v = xc * p / q
    return min(max(v, t(-1.0)), t(1.0)) if v == v else v


def erf(x):
    """erf(x) in the fused kernels: ``_erf32`` for float32, math.erf for float64."""
    return math.erf(x)


@overload(erf, inline="always")
def _erf_overload(x):
    if x == types.float32:
        return lambda x: _erf32(x)
    return lambda x: math.erf(x)
