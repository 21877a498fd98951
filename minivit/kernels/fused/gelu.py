"""GELU, tanh and exact forms, with dy/dx, one compiled pass per element.

Replaces ``minivit.kernels.gelu.forward`` (and so ``GELU.forward``'s
reference lines in ``minivit/layers/gelu.py``). Each element's y and, in
training, its dy/dx are computed while x is in a register; the backward is
then the NumPy kernel's single product dx = dy * dy/dx.

* tanh form: 0.5 (1 + tanh u) = s = 1 / (1 + exp(-2u)) (exact algebra, as in
  ``minivit/kernels/gelu.py``): y = x s and dy/dx = s + x s (1 - s) 2 du/dx
  = (1 + (x - y) 2 du/dx) / (1 + exp(-2u)), one exp and one division.
* exact form: Phi = 0.5 (1 + erf(x / sqrt 2)) and dy/dx = Phi + x phi(x).

exp and erf are ``minivit/kernels/fused/exp.py``'s: SIMD code for float32,
the C library's for float64.

Arithmetic stays in the array's dtype; for large |x|, zeros, NaN and inf the
formulas give what the NumPy kernel gives.
"""

from __future__ import annotations

import math

import numpy
from numba import njit, prange

from minivit.kernels import fused
from minivit.kernels.fused.exp import erf, exp

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _tanh_one(x, y, dydx, i, want_dydx):
    t = x.dtype.type
    v = x[i]
    v2 = v * v
    two_u = v * (t(2.0 * SQRT_2_OVER_PI) + t(2.0 * SQRT_2_OVER_PI * COEFF) * v2)
    e = exp(-two_u) + t(1.0)                           # 1 / s
    out = v / e                                              # y = x s
    y[i] = out
    if want_dydx:
        k = t(2.0 * SQRT_2_OVER_PI) + t(6.0 * SQRT_2_OVER_PI * COEFF) * v2   # 2 du/dx
        dydx[i] = (t(1.0) + (v - out) * k) / e


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _exact_one(x, y, dydx, i, want_dydx):
    t = x.dtype.type
    v = x[i]
    cdf = t(0.5) * (t(1.0) + erf(v * t(INV_SQRT_2)))  # Phi
    y[i] = v * cdf
    if want_dydx:
        dydx[i] = cdf + v * (exp(t(-0.5) * v * v) * t(INV_SQRT_2PI))   # Phi + x phi


@njit(cache=True, error_model="numpy", nogil=True)
def _tanh_serial(x, y, dydx, want_dydx):
    for i in range(x.shape[0]):
        _tanh_one(x, y, dydx, i, want_dydx)


@njit(cache=True, error_model="numpy", parallel=True)
def _tanh_parallel(x, y, dydx, want_dydx):
    for i in prange(x.shape[0]):
        _tanh_one(x, y, dydx, i, want_dydx)


@njit(cache=True, error_model="numpy", nogil=True)
def _exact_serial(x, y, dydx, want_dydx):
    for i in range(x.shape[0]):
        _exact_one(x, y, dydx, i, want_dydx)


@njit(cache=True, error_model="numpy", parallel=True)
def _exact_parallel(x, y, dydx, want_dydx):
    for i in prange(x.shape[0]):
        _exact_one(x, y, dydx, i, want_dydx)


_KERNELS = {"tanh": (_tanh_serial, _tanh_parallel), "none": (_exact_serial, _exact_parallel)}


def gelu_with_derivative(x, approximate, with_derivative):
    """Replaces ``minivit.kernels.gelu``'s forward kernels: (y, dydx or None),
    both shaped like x (a C-contiguous copy of x is used if x is not)."""
    x = numpy.ascontiguousarray(x)
    flat = x.reshape(-1)
    y = numpy.empty_like(x)
    dydx = numpy.empty_like(x) if with_derivative else y      # y: never written then
    serial, parallel = _KERNELS[approximate]
    fused.run(serial, parallel, flat.size, flat, y.reshape(-1), dydx.reshape(-1),
              with_derivative)
    return y, (dydx if with_derivative else None)


def forward(x, approximate, with_derivative):
    """Replaces ``minivit.kernels.gelu.forward``: (y, saved), saved
    ("dydx", dy/dx) in training, else ("x", x)."""
    y, dydx = gelu_with_derivative(x, approximate, with_derivative)
    return y, (("dydx", dydx) if with_derivative else ("x", x))


def derivative(x, approximate):
    """dy/dx for an x whose forward kept no derivative (eval-mode forward)."""
    return gelu_with_derivative(x, approximate, True)[1]
