"""GELU, tanh approximation (as in GPT-2 and PyTorch's approximate='tanh').

Forward                                   Backward (given dy)
  u = sqrt(2/pi) * (x + 0.044715 x^3)       du/dx = sqrt(2/pi) * (1 + 3*0.044715 x^2)
  t = tanh(u)                               dt/du = 1 - t^2
  y = 0.5 x (1 + t)                         dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx

The code evaluates these formulas with in-place operations on one or two
buffers: on large activations every temporary array is a full trip through
memory, which costs more than the arithmetic.
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
        # u = sqrt(2/pi) * x * (1 + 0.044715 x^2), built in one buffer
        t = x * x
        t *= SQRT_2_OVER_PI * COEFF
        t += SQRT_2_OVER_PI
        t *= x
        xp.tanh(t, out=t)                        # t = tanh(u)
        self.cache = (x, t)
        y = t + 1.0
        y *= x
        y *= 0.5                                 # y = 0.5 x (1 + t)
        return y

    def backward(self, dout):
        xp = backend.xp
        x, t = self._saved()
        grad = x * x
        grad *= 3.0 * SQRT_2_OVER_PI * COEFF
        grad += SQRT_2_OVER_PI                   # du/dx
        one_minus_t2 = t * t
        xp.subtract(1.0, one_minus_t2, out=one_minus_t2)   # dt/du = 1 - t^2
        grad *= one_minus_t2
        grad *= x                                # x (1 - t^2) du/dx
        grad += t
        grad += 1.0
        grad *= 0.5                              # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
        grad *= dout                             # dx = dy * dy/dx
        return grad
