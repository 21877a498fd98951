"""GELU, tanh and exact forms, with dy/dx, one compiled pass per element.

Replaces ``minivit.kernels.gelu.forward`` (and so ``GELU.forward``'s
reference lines in ``minivit/layers/gelu.py``). Each element's y and, in
training, its dy/dx are computed while x is in a register; the backward is
then the NumPy kernel's single product dx = dy * dy/dx.

* tanh form: 0.5 (1 + tanh u) = s = 1 / (1 + exp(-2u)) (exact algebra, as in
  ``minivit/kernels/gelu.py``): y = x s and dy/dx = s + x s (1 - s) 2 du/dx
  = (1 + (x - y) 2 du/dx) s, one exp and one division (s = 1 / (1 + exp(-2u))).
* exact form: Phi = 0.5 (1 + erf(x / sqrt 2)) and dy/dx = Phi + x phi(x).

exp and erf are ``minivit/kernels/fused/exp.py``'s: SIMD code for float32,
the C library's for float64.

Arithmetic stays in the array's dtype; for large |x|, zeros, NaN and inf the
formulas give what the NumPy kernel gives.
"""

from __future__ import annotations

import math

import numpy
from numba import njit

from minivit.kernels import fused
from minivit.kernels.fused.exp import erf, exp

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# a * b + c may be one fused multiply-add (one rounding instead of two, and
# half the latency on the polynomials' chains); nothing else is relaxed, so
# NaN and inf propagate as in the reference
_CONTRACT = {"contract"}


# Each loop body is branch-free (a flag tested inside the loop would keep it
# from being vectorised), so there is one loop per form and per output set.
@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _tanh(v):
    """(y, s, 2 du/dx) at v."""
    t = type(v)
    v2 = v * v
    two_u = v * (t(2.0 * SQRT_2_OVER_PI) + t(2.0 * SQRT_2_OVER_PI * COEFF) * v2)
    s = t(1.0) / (exp(-two_u) + t(1.0))                      # one division, for y and dy/dx
    k = t(2.0 * SQRT_2_OVER_PI) + t(6.0 * SQRT_2_OVER_PI * COEFF) * v2     # 2 du/dx
    return v * s, s, k                                       # y = x s


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _exact(v):
    """(y, Phi, x phi) at v."""
    t = type(v)
    cdf = t(0.5) * (t(1.0) + erf(v * t(INV_SQRT_2)))        # Phi
    return v * cdf, cdf, v * (exp(t(-0.5) * v * v) * t(INV_SQRT_2PI))


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_CONTRACT)
def _tanh_y_serial(x, y):
    for i in range(x.shape[0]):
        y[i] = _tanh(x[i])[0]



@njit(cache=True, error_model="numpy", nogil=True, fastmath=_CONTRACT)
def _tanh_yd_serial(x, y, dydx):
    for i in range(x.shape[0]):
        out, s, k = _tanh(x[i])
        y[i] = out
        dydx[i] = (type(out)(1.0) + (x[i] - out) * k) * s   # (1 + (x - y) 2 du/dx) s



@njit(cache=True, error_model="numpy", nogil=True, fastmath=_CONTRACT)
def _exact_y_serial(x, y):
    for i in range(x.shape[0]):
        y[i] = _exact(x[i])[0]



@njit(cache=True, error_model="numpy", nogil=True, fastmath=_CONTRACT)
def _exact_yd_serial(x, y, dydx):
    for i in range(x.shape[0]):
        out, cdf, xphi = _exact(x[i])
        y[i] = out
        dydx[i] = cdf + xphi                                 # Phi + x phi



_KERNELS = {("tanh", False): _tanh_y_serial, ("tanh", True): _tanh_yd_serial,
            ("none", False): _exact_y_serial, ("none", True): _exact_yd_serial}


def gelu_with_derivative(x, approximate, with_derivative):
    """Replaces ``minivit.kernels.gelu``'s forward kernels: (y, dydx or None),
    both shaped like x (a C-contiguous copy of x is used if x is not)."""
    x = numpy.ascontiguousarray(x)
    y = numpy.empty_like(x)
    kernel = _KERNELS[approximate, bool(with_derivative)]
    if with_derivative:
        dydx = numpy.empty_like(x)
        fused.run(kernel, (x.reshape(-1), y.reshape(-1), dydx.reshape(-1)))
        return y, dydx
    fused.run(kernel, (x.reshape(-1), y.reshape(-1)))
    return y, None


def forward(x, approximate, with_derivative):
    """Replaces ``minivit.kernels.gelu.forward``: (y, saved), saved
    ("dydx", dy/dx) in training, else ("x", x)."""
    y, dydx = gelu_with_derivative(x, approximate, with_derivative)
    return y, (("dydx", dydx) if with_derivative else ("x", x))


def derivative(x, approximate):
    """dy/dx for an x whose forward kept no derivative (eval-mode forward)."""
    return gelu_with_derivative(x, approximate, True)[1]
