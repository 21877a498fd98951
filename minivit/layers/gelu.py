"""GELU, y = x Phi(x), Phi the standard normal CDF: tanh approximation (as in
GPT-2 and PyTorch's approximate='tanh', the default here for training from
scratch) or exact (erf; what timm's and Google's pretrained ViTs use).

Tanh form                                 Backward (given dy)
  u = sqrt(2/pi) * (x + 0.044715 x^3)       du/dx = sqrt(2/pi) * (1 + 3*0.044715 x^2)
  t = tanh(u)                               dt/du = 1 - t^2
  y = 0.5 x (1 + t)                         dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
                                            dx = dy * dy/dx

Exact form                                Backward (given dy)
  Phi = 0.5 (1 + erf(x / sqrt 2))           phi = exp(-x^2 / 2) / sqrt(2 pi)   (= dPhi/dx)
  y = x Phi                                 dy/dx = Phi + x phi
                                            dx = dy * dy/dx

The forward keeps x and t (or Phi) for the backward. The same function,
faster (through exp, dy/dx computed in the forward, on every core):
``minivit/kernels/gelu.py``.
"""

from __future__ import annotations

import math

from minivit import backend, kernels
from minivit.module import Module, is_grad_enabled
from minivit.special import erf

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715
APPROXIMATIONS = ("tanh", "none")


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

    def forward(self, x):
        if kernels.enabled():                # the same function, faster: minivit/kernels/gelu.py
            y, saved = kernels.gelu.forward(x, self.approximate,
                                            self.training and is_grad_enabled())
            self._keep("fast", saved)
            return y
        xp = backend.xp
        if self.approximate == "tanh":
            u = SQRT_2_OVER_PI * (x + COEFF * x ** 3)
            t = xp.tanh(u)
            y = 0.5 * x * (1 + t)
            self._keep("reference", (x, t))
        else:
            Phi = 0.5 * (1 + erf(x / math.sqrt(2)))
            y = x * Phi
            self._keep("reference", (x, Phi))
        return y

    def backward(self, dout):
        xp = backend.xp
        how, saved = self._saved()
        if how == "fast":                    # the same function, faster: minivit/kernels/gelu.py
            return kernels.gelu.backward(dout, saved, self.approximate)
        if self.approximate == "tanh":
            x, t = saved
            dudx = SQRT_2_OVER_PI * (1 + 3 * COEFF * x ** 2)
            dydx = 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * dudx
        else:
            x, Phi = saved
            phi = xp.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
            dydx = Phi + x * phi
        return dout * dydx                   # dx = dy * dy/dx

    def extra_repr(self):
        return f"approximate={self.approximate!r}"
