"""Multi-head self-attention, with one fused qkv projection (timm's layout).

Shapes: B batch, T tokens, D = heads * hd model width, hd head width.

Forward                                         Backward (given dy)
  qkv = x @ Wqkv^T + bqkv      (B, T, 3D)         dx   = qkv.backward(dqkv)
  q, k, v = split(qkv)         (B, H, T, hd)      dqkv = merge(dq, dk, dv)
  s = q @ k^T * scale          (B, H, T, T)       dq = ds @ k * scale,  dk = ds^T @ q * scale
  a = softmax(s, axis=-1)      (B, H, T, T)       ds = a * (da - sum(da * a, axis=-1))
  a' = dropout(a)                                 da = dropout.backward(da')
  o = a' @ v                   (B, H, T, hd)      da' = do @ v^T,  dv = a'^T @ do
  y = proj(merge_heads(o))     (B, T, D)          do = split_heads(proj.backward(dy))

The softmax line is the Jacobian-vector product of softmax: for each row,
ds_i = a_i * (da_i - sum_j a_j da_j).

``num_queries=Q`` computes the outputs of the first Q tokens only (queries
q[:, :, :Q], so s, a and o have Q rows), still attending to all T keys and
values: a class-token ViT's last block needs only its class token's output.
Then dq is zero for the other T - Q tokens, and dk, dv are as before.

The same function, faster (the per-head work on blocks of the batch on every
core, a softmax with one max per matrix): ``minivit/kernels/attention.py``.
"""

from __future__ import annotations

import math

from minivit import backend, kernels
from minivit.layers.dropout import Dropout
from minivit.layers.linear import Linear
from minivit.module import Module


def softmax(scores):
    """Numerically stable softmax over the last axis: (..., n) -> (..., n).

    Subtracting the row max changes nothing mathematically (it cancels in the
    ratio) but keeps exp() from overflowing.
    """
    xp = backend.xp
    e = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class MultiHeadSelfAttention(Module):
    """Shapes: x (B, T, D) -> y (B, Q, D), Q = T unless ``num_queries`` is given.

    Sub-modules (timm names): ``qkv`` Linear(D, 3D) whose output rows are
    ordered [q; k; v], each split into heads contiguously; ``proj``
    Linear(D, D). After every forward, ``attn_probs`` (B, heads, Q, T) holds
    the attention probabilities (before dropout) for visualisation: Q = T,
    or ``num_queries``.
    """

    # kept between forward and backward (a copy of the module leaves them behind)
    forward_state = ("cache", "attn_probs")

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        if heads < 1 or dim % heads != 0:
            raise ValueError(
                f"dim ({dim}) must be divisible by heads ({heads}); e.g. dim=64 with "
                "heads=1, 2, 4 or 8"
            )
        self.dim, self.heads = dim, heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = Dropout(attn_dropout)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_dropout)
        self.attn_probs = None

    def forward(self, x, num_queries=None):
        """x (B, T, D) -> y (B, Q, D): the outputs of the first Q tokens (all
        T unless ``num_queries`` is given), each attending to all T tokens."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"attention expects (B, T, {self.dim}), got shape {tuple(x.shape)}"
            )
        B, T, D = x.shape
        Q = T if num_queries is None else num_queries
        if not 1 <= Q <= T:
            raise ValueError(f"num_queries must be between 1 and the {T} tokens, got {Q}")
        H, hd = self.heads, self.head_dim
        qkv = self.qkv.forward(x)                                    # (B, T, 3D)
        # (B, T, 3, H, hd) -> (3, B, H, T, hd): q, k, v are views, each (B, H, T, hd)
        q, k, v = qkv.reshape(B, T, 3, H, hd).transpose(2, 0, 3, 1, 4)
        q = q[:, :, :Q]                                              # (B, H, Q, hd)
        fast = kernels.enabled()     # the same function, faster: minivit/kernels/attention.py
        if fast:
            a, o, kept = kernels.attention.forward(q, k, v, self.scale,
                                                   self.attn_drop.forward)
        else:
            s = (q @ k.transpose(0, 1, 3, 2)) * self.scale           # (B, H, Q, T)
            a = softmax(s)                                           # (B, H, Q, T)
            a_dropped = self.attn_drop.forward(a)                    # a' = dropout(a)
            o = a_dropped @ v                                        # (B, H, Q, hd)
            kept = (q, k, v, a, a_dropped)
        self.attn_probs = a
        self._keep(fast, kept)                                       # backward takes the same path
        merged = o.transpose(0, 2, 1, 3).reshape(B, Q, D)            # merge_heads(o)
        return self.proj_drop.forward(self.proj.forward(merged))     # (B, Q, D)

    def backward(self, dout):
        xp = backend.xp
        fast, kept = self._saved()
        B, Q, _ = dout.shape
        H, hd = self.heads, self.head_dim
        dmerged = self.proj.backward(self.proj_drop.backward(dout))  # (B, Q, D)
        do = dmerged.reshape(B, Q, H, hd).transpose(0, 2, 1, 3)      # split_heads: (B, H, Q, hd)
        if fast:                     # the forward ran minivit/kernels/attention.py
            dqkv = kernels.attention.backward(do, kept, self.scale, self.attn_drop.backward)
            return self.qkv.backward(dqkv)
        q, k, v, a, a_dropped = kept
        T = k.shape[2]
        da_dropped = do @ v.transpose(0, 1, 3, 2)                    # (B, H, Q, T)
        dv = a_dropped.transpose(0, 1, 3, 2) @ do                    # (B, H, T, hd)
        da = self.attn_drop.backward(da_dropped)                     # (B, H, Q, T)
        ds = a * (da - (da * a).sum(axis=-1, keepdims=True))         # (B, H, Q, T)
        dq = ds @ k * self.scale                                     # (B, H, Q, hd)
        dk = ds.transpose(0, 1, 3, 2) @ q * self.scale               # (B, H, T, hd)
        if Q < T:                                                    # tokens that asked nothing
            dq = xp.concatenate([dq, xp.zeros((B, H, T - Q, hd), dtype=dq.dtype)], axis=2)
        dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4)       # merge: (B, T, 3, H, hd)
        return self.qkv.backward(dqkv.reshape(B, T, 3 * H * hd))

    def extra_repr(self):
        return f"dim={self.dim}, heads={self.heads}"
