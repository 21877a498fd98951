"""Inverted dropout.

Forward (training)                          Backward
  mask = (u >= p) / (1 - p),  u ~ U[0,1)      dx = dy * mask    (the same mask)
  y    = x * mask
In eval mode, or with p = 0, both passes are the identity. Scaling by
1/(1-p) at training time keeps E[y] = x, so nothing changes at test time.
The same function, faster (mask and product in one pass, from the same
random numbers): ``minivit/kernels/dropout.py``.
"""

from __future__ import annotations

from minivit import backend, kernels
from minivit.module import Module


class Dropout(Module):
    """Shapes: x (...) -> y (...). Masks come from ``backend.device_rng()``,
    so ``backend.seed(n)`` before a forward reproduces the mask."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._keep("identity", None)
            return x
        if kernels.enabled():              # the same function, faster: minivit/kernels/dropout.py
            y, mask = kernels.dropout.forward(x, self.p)
        else:
            keep = backend.device_rng().random(x.shape, dtype=x.dtype) >= self.p
            mask = keep.astype(x.dtype) * (1.0 / (1.0 - self.p))
            y = x * mask
        self._keep("mask", mask)
        return y

    def backward(self, dout):
        cached = self._saved()
        if cached[0] == "identity":
            return dout
        return dout * cached[1]

    def extra_repr(self):
        return f"p={self.p}"
