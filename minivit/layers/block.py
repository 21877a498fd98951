"""Transformer block, pre-norm (as in ViT and timm).

Forward                                  Backward (given dy)
  x1 = x + attn(norm1(x))                  dx1 = dy + norm2.backward(mlp.backward(dy))
  y  = x1 + mlp(norm2(x1))                 dx  = dx1 + norm1.backward(attn.backward(dx1))

A residual connection passes its gradient through unchanged, so each
``dx = d(skip) + d(branch)``: the identity path is why deep stacks train.

With ``num_queries=Q`` only the first Q tokens' outputs are computed
(attention still reads all T tokens): x1 = x[:, :Q] + attn(norm1(x)), so
the skip's gradient reaches only dx[:, :Q]. A class-token ViT's last block
runs so: nothing reads its other outputs.
"""

from __future__ import annotations

from minivit.layers.attention import MultiHeadSelfAttention
from minivit.layers.layernorm import LayerNorm
from minivit.layers.mlp import MLP
from minivit.module import Module


class Block(Module):
    """Shapes: x (B, T, dim) -> y (B, Q, dim), Q = T unless ``num_queries``
    is given. timm names: ``norm1``, ``attn``, ``norm2``, ``mlp``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, eps: float = 1e-6, qkv_bias: bool = True,
                 gelu: str = "tanh"):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = MultiHeadSelfAttention(dim, heads, attn_dropout=attn_dropout,
                                           proj_dropout=dropout, qkv_bias=qkv_bias)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, dropout=dropout, gelu=gelu)

    def forward(self, x, num_queries=None):
        """x (B, T, D) -> y (B, Q, D), Q = T unless ``num_queries`` is given."""
        Q = x.shape[1] if num_queries is None else num_queries
        self._keep(Q)
        # Each branch returns a fresh array, so the residual is added in place.
        x1 = self.attn.forward(self.norm1.forward(x), num_queries)
        x1 += x[:, :Q]                                       # x1 = x + attn(norm1(x))
        y = self.mlp.forward(self.norm2.forward(x1))
        y += x1                                              # y = x1 + mlp(norm2(x1))
        return y

    def backward(self, dout):
        Q = self._saved()
        dx1 = self.norm2.backward(self.mlp.backward(dout))
        dx1 += dout                                          # dx1 = dy + d(mlp branch)
        dx = self.norm1.backward(self.attn.backward(dx1))
        dx[:, :Q] += dx1                                     # dx = dx1 + d(attn branch)
        return dx
