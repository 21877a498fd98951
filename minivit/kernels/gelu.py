"""GELU through exp, with dy/dx computed while x is in cache.

Replaces the tanh and erf lines of ``minivit/layers/gelu.py`` (``GELU``'s
reference path), which stay the definition. Three rearrangements:

* **The tanh form as a sigmoid** (exact algebra, no approximation):
  0.5 (1 + tanh u) = 1 / (1 + exp(-2u)) = s, so y = x s and
  dy/dx = s + x s (1 - s) 2 du/dx. NumPy vectorises float32 exp on every x86
  CPU, tanh only on those with AVX-512. Since x s (1 - s) = (x - y) s,
  dy/dx = (1 + (x - y) 2 du/dx) / (1 + exp(-2u)): one division, by the
  denominator the forward already holds, instead of forming s and 1 - s.
* **The exact form in float32 as a sigmoid too** (a fitted approximation):
  Phi(x) = 1 / (1 + exp(-x h(x^2))), h a degree-6 polynomial fitted to
  logit(Phi(x)) / x; far fewer passes over the array than a rational erf.
  For every float32 x its y is within ``GELU_EXACT_FLOAT32_MAX_ERROR``
  max(|x|, 1) of the exact x Phi(x) (tested over every float32 value range).
  float64 and CuPy keep erf (``gelu_exact_forward_kernel``).
* **dy/dx in the forward**: it depends only on x, so in training mode it is
  computed at once and kept instead of x; the backward is then one product,
  dx = dy * dy/dx. The kernels work in place on the buffers they are given
  (on large activations each temporary is a full trip through memory), and
  ``parallel_rows`` runs them on blocks of rows on every core.
"""

from __future__ import annotations

import math

import numpy

from minivit import backend
from minivit.kernels.erf import erf, polynomial
from minivit.kernels.switch import fused_for
from minivit.parallel.threads import parallel_rows

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_sigmoid_forward_kernel(x, y, dydx=None):
    """Replaces the tanh form (``GELU`` with approximate="tanh"), computed
    through exp: y = x s, s = 1 / (1 + exp(-2u)), dy/dx = (1 + (x - y) 2 du/dx) s.
    Writes y and, if a buffer is given, dydx; elementwise."""
    xp = backend.xp
    w = xp.square(x, out=dydx)               # x^2, in dydx's buffer if there is one
    w *= -2.0 * SQRT_2_OVER_PI * COEFF
    w -= 2.0 * SQRT_2_OVER_PI                # w = -2 sqrt(2/pi) (1 + 0.044715 x^2)
    # -2u = x w, in w's own buffer unless w is needed again for dy/dx
    e = xp.multiply(w, x, out=w if dydx is None else None)
    with numpy.errstate(over="ignore"):      # x << 0: exp(-2u) = inf, so s = 0
        xp.exp(e, out=e)
    e += 1.0                                 # 1 / s = 1 + exp(-2u)
    xp.divide(x, e, out=y)                   # y = x s
    if dydx is None:
        return
    w *= -3.0
    w -= 4.0 * SQRT_2_OVER_PI                # 2 du/dx = -3 w - 4 sqrt(2/pi)
    w *= xp.subtract(x, y)                   # (x - y) 2 du/dx, x - y = x (1 - s)
    w += 1.0
    w /= e                                   # dy/dx = (1 + (x - y) 2 du/dx) s


def gelu_exact_forward_kernel(x, y, dydx=None):
    """Replaces the exact form (``GELU`` with approximate="none") in place:
    y = x Phi(x) and, if a buffer is given, dydx = Phi + x phi(x)."""
    xp = backend.xp
    cdf = x * INV_SQRT_2
    erf(cdf, out=cdf)
    cdf += 1.0
    cdf *= 0.5                               # Phi = 0.5 (1 + erf(x / sqrt 2))
    xp.multiply(x, cdf, out=y)               # y = x Phi
    if dydx is None:
        return
    xp.multiply(x, x, out=dydx)
    dydx *= -0.5
    xp.exp(dydx, out=dydx)
    dydx *= INV_SQRT_2PI                     # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    dydx *= x
    dydx += cdf                              # dy/dx = Phi + x phi(x)


# h(s) in Phi(x) = 1 / (1 + exp(-x h(x^2))), coefficients of s^0 .. s^6: a fit
# of logit(Phi(x)) / x over x in [0, 6], weighted by dPhi/dh = Phi (1 - Phi) x
# and refined toward equal-ripple. h(0) ~ sqrt(8 / pi) = phi(0) / (Phi(0) (1 -
# Phi(0))), Phi's slope at 0; h >= h(0) > 0 for all s, so Phi saturates
# correctly far out, where float32 Phi is 0 or 1 anyway.
_PHI_LOGIT_H = (1.5957698829726310e+00, 7.2666168881621349e-02, -6.5189614451868837e-05,
                -1.1061254712884442e-04, 7.9295214464705024e-06, -2.6452953525111791e-07,
                3.5124280640686314e-09)
_MINUS_H = tuple(-c for c in _PHI_LOGIT_H)
GELU_EXACT_FLOAT32_MAX_ERROR = 2e-7     # of y, over max(|x|, 1); checked by tests/test_kernels.py


def gelu_exact_sigmoid_forward_kernel(x, y, dydx=None):
    """Replaces ``gelu_exact_forward_kernel`` for float32, without erf:
    Phi = 1 / (1 + exp(-x h(x^2))), y = x Phi, dy/dx = Phi + x phi(x)."""
    xp = backend.xp
    with numpy.errstate(over="ignore"):     # |x| huge: h = inf, exp(+-inf) -> Phi 0 or 1
        s = xp.square(x)
        e = polynomial(s, _MINUS_H)          # -h(x^2)
        e *= x
        xp.exp(e, out=e)
    e += 1.0                                 # 1 / Phi
    if dydx is None:
        xp.divide(x, e, out=y)               # y = x Phi
        return
    xp.reciprocal(e, out=e)                  # Phi
    xp.multiply(x, e, out=y)                 # y = x Phi
    s *= -0.5
    xp.exp(s, out=dydx)
    dydx *= INV_SQRT_2PI                     # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    dydx *= x
    dydx += e                                # dy/dx = Phi + x phi(x)


def gelu_exact_fast_forward_kernel(x, y, dydx=None):
    """The exact GELU as run: the sigmoid form for float32 on NumPy, erf otherwise."""
    if backend.name == "numpy" and x.dtype == numpy.float32:
        gelu_exact_sigmoid_forward_kernel(x, y, dydx)
    else:
        gelu_exact_forward_kernel(x, y, dydx)


def _kernel(approximate):
    return gelu_sigmoid_forward_kernel if approximate == "tanh" else gelu_exact_fast_forward_kernel


def forward(x, approximate, with_derivative):
    """Replaces ``GELU.forward``'s reference lines: (y, saved), where saved is
    ("dydx", dy/dx) if ``with_derivative`` (training), else ("x", x).
    With numba: ``minivit/kernels/fused/gelu.py``."""
    if fused_for(x):
        from minivit.kernels.fused import gelu as fused_gelu
        return fused_gelu.forward(x, approximate, with_derivative)
    xp = backend.xp
    kernel = _kernel(approximate)
    y = xp.empty_like(x)
    if with_derivative:
        dydx = xp.empty_like(x)
        parallel_rows(kernel, _rows(x), _rows(y), _rows(dydx))
        return y, ("dydx", dydx)
    parallel_rows(kernel, _rows(x), _rows(y))   # no derivative unless backward asks
    return y, ("x", x)


def backward(dout, saved, approximate):
    """Replaces ``GELU.backward``'s reference lines: dx = dy * dy/dx."""
    xp = backend.xp
    kind, array = saved
    if kind == "x" and fused_for(array):
        from minivit.kernels.fused import gelu as fused_gelu
        dydx = fused_gelu.derivative(array, approximate)
    elif kind == "x":                        # forward ran in eval mode: derive now
        dydx = xp.empty_like(array)
        parallel_rows(_kernel(approximate), _rows(array), _rows(xp.empty_like(array)),
                      _rows(dydx))
    else:
        dydx = array
    return dout * dydx                       # dx = dy * dy/dx


def _rows(a):
    """(..., n) -> (R, n) view: the kernels work on rows."""
    return a.reshape(-1, a.shape[-1])
