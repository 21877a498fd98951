"""MLP: fc1 -> GELU -> dropout -> fc2 -> dropout, applied to every token.

Forward                        Backward (given dy), the chain rule in reverse
  h = fc1(x)    (B, T, M)        dh = fc1.backward applied last
  g = gelu(h)                    dg -> dh through gelu.backward
  g' = drop1(g)                  dg' -> dg through drop1.backward
  z = fc2(g')   (B, T, D)        dz -> dg' through fc2.backward
  y = drop2(z)                   dy -> dz through drop2.backward
"""

from __future__ import annotations

from minivit.layers.dropout import Dropout
from minivit.layers.gelu import GELU
from minivit.layers.linear import Linear
from minivit.module import Module


class MLP(Module):
    """Shapes: x (..., dim) -> y (..., dim), hidden width ``hidden_dim``.
    timm names: ``fc1`` (hidden_dim, dim), ``fc2`` (dim, hidden_dim)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0,
                 gelu: str = "tanh"):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = GELU(approximate="none" if gelu == "exact" else gelu)
        self.drop1 = Dropout(dropout)
        self.fc2 = Linear(hidden_dim, dim)
        self.drop2 = Dropout(dropout)

    def forward(self, x):
        self._keep(True)
        h = self.drop1.forward(self.act.forward(self.fc1.forward(x)))
        return self.drop2.forward(self.fc2.forward(h))

    def backward(self, dout):
        self._saved()
        dh = self.fc2.backward(self.drop2.backward(dout))
        return self.fc1.backward(self.act.backward(self.drop1.backward(dh)))
