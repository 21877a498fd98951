"""GELU, y = x Phi(x), Phi the standard normal CDF: tanh approximation (as in
GPT-2 and PyTorch's approximate='tanh', the default here for training from
scratch) or exact (erf; what timm's and Google's pretrained ViTs use).

Tanh form                                 Backward (given dy)
  u = sqrt(2/pi) * (x + 0.044715 x^3)       du/dx = sqrt(2/pi) * (1 + 3*0.044715 x^2)
  t = tanh(u)                               dt/du = 1 - t^2
  y = 0.5 x (1 + t)                         dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx

Exact form                                Backward (given dy)
  Phi = 0.5 (1 + erf(x / sqrt 2))           dPhi/dx = phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
  y = x Phi                                 dy/dx = Phi + x phi(x)

Both forms as computed: 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)) = s, a logistic
sigmoid, so the tanh form runs as y = x s with dy/dx = s + x s (1 - s) 2 du/dx
(``gelu_forward_kernel`` keeps the tanh lines above as the reference): NumPy
vectorises float32 exp on every x86 CPU, tanh only on those with AVX-512
(where the two forms run within 8% of each other). Since x s (1 - s) = (x - y) s,
dy/dx = (1 + (x - y) 2 du/dx) / (1 + exp(-2u)): one division, by the
denominator the forward already holds, instead of forming s and 1 - s.

The exact form in float32 on NumPy runs without erf, also as a logistic
sigmoid: Phi(x) = 1 / (1 + exp(-x h(x^2))), h a degree-6 polynomial fitted to
logit(Phi(x)) / x (``gelu_exact_sigmoid_forward_kernel``; 18 NumPy passes
instead of 31 through a rational erf). For every float32 x its y is within
2e-7 max(|x|, 1) of the exact x Phi(x) (``GELU_EXACT_FLOAT32_MAX_ERROR``,
tested; 1.7e-7 measured, the rational erf's 2.5e-7). float64 and CuPy use
erf itself (``minivit.ops.erf``).

dy/dx depends only on x, so in training mode the forward kernel computes it
right away, while x and t are still in cache, and keeps it instead of x and
t: the backward is then a single product, dx = dy * dy/dx. The kernels use
in-place operations on the buffers they are given (on large activations each
temporary array is a full trip through memory), and ``parallel_rows`` runs
them on blocks of rows on every core.
"""

from __future__ import annotations

import math

import numpy

from minivit import backend
from minivit.module import Module, is_grad_enabled
from minivit.ops import erf, parallel_rows, polynomial

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
APPROXIMATIONS = ("tanh", "none")


def gelu_forward_kernel(x, y, dydx=None):
    """Write y = gelu(x) and, if a buffer is given, dydx = dy/dx; elementwise."""
    xp = backend.xp
    t = x * x
    t *= SQRT_2_OVER_PI * COEFF
    t += SQRT_2_OVER_PI
    t *= x                                   # u = sqrt(2/pi) * x * (1 + 0.044715 x^2)
    xp.tanh(t, out=t)                        # t = tanh(u)
    xp.add(t, 1.0, out=y)
    y *= x
    y *= 0.5                                 # y = 0.5 x (1 + t)
    if dydx is None:
        return
    xp.multiply(x, x, out=dydx)
    dydx *= 3.0 * SQRT_2_OVER_PI * COEFF
    dydx += SQRT_2_OVER_PI                   # du/dx
    dydx *= x
    one_minus_t2 = t * t
    xp.subtract(1.0, one_minus_t2, out=one_minus_t2)   # dt/du = 1 - t^2
    dydx *= one_minus_t2                     # x (1 - t^2) du/dx
    dydx += t
    dydx += 1.0
    dydx *= 0.5                              # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx


def gelu_sigmoid_forward_kernel(x, y, dydx=None):
    """``gelu_forward_kernel`` computed through exp: y = x s, s = 1 / (1 + exp(-2u)),
    dy/dx = (1 + (x - y) 2 du/dx) s."""
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
    """Write y = x Phi(x) and, if a buffer is given, dydx = Phi + x phi(x)."""
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
GELU_EXACT_FLOAT32_MAX_ERROR = 2e-7     # of y, over max(|x|, 1); checked by tests/test_ops.py


def gelu_exact_sigmoid_forward_kernel(x, y, dydx=None):
    """``gelu_exact_forward_kernel`` for float32 without erf:
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


class GELU(Module):
    """Elementwise; shapes: x (...) -> y (...). No parameters.

    ``approximate``: ``"tanh"`` (default) or ``"none"`` for the exact erf
    form, as ``torch.nn.GELU(approximate=...)``.
    """

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in APPROXIMATIONS:
            raise ValueError(f"GELU approximate must be one of {APPROXIMATIONS}, "
                             f"got {approximate!r}")
        self.approximate = approximate
        self.kernel = (gelu_sigmoid_forward_kernel if approximate == "tanh"
                       else gelu_exact_fast_forward_kernel)

    def forward(self, x):
        xp = backend.xp
        y = xp.empty_like(x)
        if self.training and is_grad_enabled():
            dydx = xp.empty_like(x)
            parallel_rows(self.kernel, _rows(x), _rows(y), _rows(dydx))
            self._keep("dydx", dydx)
        else:                                # no derivative unless backward asks
            parallel_rows(self.kernel, _rows(x), _rows(y))
            self._keep("x", x)
        return y

    def backward(self, dout):
        xp = backend.xp
        kind, saved = self._saved()
        if kind == "x":                      # forward ran in eval mode: derive now
            dydx = xp.empty_like(saved)
            parallel_rows(self.kernel, _rows(saved), _rows(xp.empty_like(saved)),
                          _rows(dydx))
        else:
            dydx = saved
        return dout * dydx                   # dx = dy * dy/dx

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


def _rows(a):
    """(..., n) -> (R, n) view: the kernels work on rows."""
    return a.reshape(-1, a.shape[-1])
