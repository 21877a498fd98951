"""GELU, tanh approximation (as in GPT-2 and PyTorch's approximate='tanh').

Forward                                   Backward (given dy)
  u = sqrt(2/pi) * (x + 0.044715 x^3)       du/dx = sqrt(2/pi) * (1 + 3*0.044715 x^2)
  t = tanh(u)                               dt/du = 1 - t^2
  y = 0.5 x (1 + t)                         dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx

The two kernels below evaluate these formulas with in-place operations on
the buffers they are given (on large activations every temporary array is a
full trip through memory, which costs more than the arithmetic), and
``parallel_rows`` runs them on blocks of rows on every core.
"""

from __future__ import annotations

import math

from minivit import backend
from minivit.module import Module
from minivit.ops import parallel_rows

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
COEFF = 0.044715


def gelu_forward_kernel(x, t, y):
    """Write t = tanh(u) and y = gelu(x), elementwise."""
    xp = backend.xp
    xp.multiply(x, x, out=t)
    t *= SQRT_2_OVER_PI * COEFF
    t += SQRT_2_OVER_PI
    t *= x                                   # u = sqrt(2/pi) * x * (1 + 0.044715 x^2)
    xp.tanh(t, out=t)                        # t = tanh(u)
    xp.add(t, 1.0, out=y)
    y *= x
    y *= 0.5                                 # y = 0.5 x (1 + t)


def gelu_backward_kernel(x, t, dout, dx):
    """Write dx = dout * dy/dx, elementwise, using ``t`` as scratch space."""
    xp = backend.xp
    xp.multiply(x, x, out=dx)
    dx *= 3.0 * SQRT_2_OVER_PI * COEFF
    dx += SQRT_2_OVER_PI                     # du/dx
    dx *= x
    one_minus_t2 = xp.multiply(t, t)
    xp.subtract(1.0, one_minus_t2, out=one_minus_t2)   # dt/du = 1 - t^2
    dx *= one_minus_t2                       # x (1 - t^2) du/dx
    dx += t
    dx += 1.0
    dx *= 0.5                                # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
    dx *= dout                               # dx = dy * dy/dx


class GELU(Module):
    """Elementwise; shapes: x (...) -> y (...). No parameters."""

    def forward(self, x):
        xp = backend.xp
        t, y = xp.empty_like(x), xp.empty_like(x)
        parallel_rows(gelu_forward_kernel, x.reshape(-1, x.shape[-1]),
                      t.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]))
        self.cache = (x, t)
        return y

    def backward(self, dout):
        xp = backend.xp
        x, t = self._saved()
        dx = xp.empty_like(x)
        width = x.shape[-1]
        parallel_rows(gelu_backward_kernel, x.reshape(-1, width), t.reshape(-1, width),
                      dout.reshape(-1, width), dx.reshape(-1, width))
        return dx
