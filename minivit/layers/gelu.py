"""GELU, tanh approximation (as in GPT-2 and PyTorch's approximate='tanh').

Forward                                   Backward (given dy)
  u = sqrt(2/pi) * (x + 0.044715 x^3)       du/dx = sqrt(2/pi) * (1 + 3*0.044715 x^2)
  t = tanh(u)                               dt/du = 1 - t^2
  y = 0.5 x (1 + t)                         dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
"""

from __future__ import annotations

import math

from minivit import backend
from minivit.module import Module

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715


class GELU(Module):
    """Elementwise; shapes: x (...) -> y (...). No parameters."""

    def forward(self, x):
        xp = backend.xp
        t = xp.tanh(SQRT_2_OVER_PI * (x + COEFF * x * x * x))
        self.cache = (x, t)
        return 0.5 * x * (1.0 + t)

    def backward(self, dout):
        x, t = self._saved()
        du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * COEFF * x * x)
        dy_dx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx
        return dout * dy_dx
