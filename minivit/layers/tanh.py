"""Tanh, elementwise (the activation of the pre-logits layer of Google's
ImageNet-21k ViT checkpoints).

Forward                  Backward (given dy)
  y = tanh(x)              dy/dx = 1 - y^2,  so dx = dy * (1 - y^2)

The derivative is a function of the output, so the forward keeps y, not x.
"""

from __future__ import annotations

from minivit import backend
from minivit.module import Module


class Tanh(Module):
    """Elementwise; shapes: x (...) -> y (...). No parameters."""

    def forward(self, x):
        y = backend.xp.tanh(x)
        self._keep(y)
        return y

    def backward(self, dout):
        y = self._saved()
        return dout * (1.0 - y * y)                       # dx = dy (1 - y^2)
