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
"""

from __future__ import annotations

import math
from functools import partial

from minivit import backend
from minivit.layers.dropout import Dropout
from minivit.layers.linear import Linear
from minivit.module import Module
from minivit.ops import dot_last, parallel_rows, sum_last


def softmax(scores):
    """Numerically stable softmax over the last axis, computed in place.

    Subtracting the row max changes nothing mathematically (it cancels in the
    ratio) but keeps exp() from overflowing. Overwrites and returns ``scores``.
    This is the reference; attention uses ``softmax_of_score_matrices``.
    """
    xp = backend.xp
    scores -= scores.max(axis=-1, keepdims=True)
    xp.exp(scores, out=scores)
    scores /= sum_last(scores)
    return scores


def softmax_of_score_matrices(scores, out):
    """``out = softmax(scores)`` over the last axis for scores (..., T, T'), faster.

    NumPy takes the max of many short rows slowly, so each (T, T') matrix is
    shifted by its overall max instead (one reduction over a long contiguous
    axis): exp() still cannot overflow, and the shift still cancels. Only if a
    whole row lies so far below its matrix's max that its exps underflow (its
    sum falls below ~1e8 x the smallest normal float) are the row maxima
    computed after all. Overwrites ``scores``.
    """
    xp = backend.xp
    scores -= scores.reshape(*scores.shape[:-2], -1).max(axis=-1)[..., None, None]
    xp.exp(scores, out=out)
    sums = sum_last(out)
    if (sums < xp.finfo(scores.dtype).tiny * 1e8).any():   # rare: fall back to row maxima
        scores -= scores.max(axis=-1, keepdims=True)
        xp.exp(scores, out=out)
        sums = sum_last(out)
    out /= sums


# The per-head arithmetic as kernels on a block of images (first axis): each
# writes its results into the arrays it is given, so ``parallel_rows`` can run
# blocks of the batch on all cores.  Shapes per block: q, k, v, dq, dk, dv
# (b, H, T, hd); attn, dattn (b, H, T, T).

def scores_softmax_kernel(q, k, attn, scale):
    """attn = softmax(q k^T * scale)"""
    scores = q @ k.transpose(0, 1, 3, 2)
    scores *= scale
    softmax_of_score_matrices(scores, out=attn)


def weighted_values_kernel(attn, v, out):
    """out = attn @ v"""
    backend.xp.matmul(attn, v, out=out)


def values_backward_kernel(dout_heads, v, attn_dropped, dattn_dropped, dv):
    """out = a' v:  da' = do v^T,  dv = a'^T do"""
    xp = backend.xp
    xp.matmul(dout_heads, v.transpose(0, 1, 3, 2), out=dattn_dropped)
    xp.matmul(attn_dropped.transpose(0, 1, 3, 2), dout_heads, out=dv)


def scores_backward_kernel(dattn, attn, q, k, dq, dk, scale):
    """a = softmax(s), s = q k^T * scale:
    ds = a * (da - sum(da * a)) * scale (in place in dattn),  dq = ds k,  dk = ds^T q"""
    xp = backend.xp
    dscores = dattn
    dscores -= dot_last(dattn, attn)
    dscores *= attn
    dscores *= scale
    xp.matmul(dscores, k, out=dq)
    xp.matmul(dscores.transpose(0, 1, 3, 2), q, out=dk)


class MultiHeadSelfAttention(Module):
    """Shapes: x (B, T, D) -> y (B, Q, D), Q = T unless ``num_queries`` is given.

    Sub-modules (timm names): ``qkv`` Linear(D, 3D) whose output rows are
    ordered [q; k; v], each split into heads contiguously; ``proj``
    Linear(D, D). After every forward, ``attn_probs`` (B, heads, Q, T) holds
    the attention probabilities (before dropout) for visualisation: Q = T,
    or ``num_queries``.
    """

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
        xp = backend.xp
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
        attn = xp.empty((B, H, Q, T), dtype=x.dtype)
        parallel_rows(partial(scores_softmax_kernel, scale=self.scale), q, k, attn)
        self.attn_probs = attn                                       # a = softmax(q k^T * scale)
        attn_dropped = self.attn_drop.forward(attn)                  # a' = dropout(a)
        # out = a' @ v, written straight into (B, T, H, hd) order so that merging
        # the heads back into (B, T, D) is a free reshape, not a copy.
        merged = xp.empty((B, Q, H, hd), dtype=x.dtype)
        parallel_rows(weighted_values_kernel, attn_dropped, v, merged.transpose(0, 2, 1, 3))
        self._keep(q, k, v, attn, attn_dropped)
        return self.proj_drop.forward(self.proj.forward(merged.reshape(B, Q, D)))

    def backward(self, dout):
        xp = backend.xp
        q, k, v, attn, attn_dropped = self._saved()
        B, H, T, hd = k.shape
        Q = q.shape[2]
        dmerged = self.proj.backward(self.proj_drop.backward(dout))  # (B, Q, D)
        dout_heads = dmerged.reshape(B, Q, H, hd).transpose(0, 2, 1, 3)  # (B, H, Q, hd) view
        # The gradient of qkv is assembled in place: dq, dk, dv are written into
        # the (B, T, 3, H, hd) layout that the forward split.
        dqkv = xp.empty((B, T, 3, H, hd), dtype=q.dtype)
        dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                   # views, (B, H, T, hd)
        if Q < T:
            dq[:, :, Q:] = 0                                         # tokens that asked nothing
            dq = dq[:, :, :Q]
        dattn_dropped = xp.empty_like(attn)
        parallel_rows(values_backward_kernel, dout_heads, v, attn_dropped, dattn_dropped, dv)
        dattn = self.attn_drop.backward(dattn_dropped)               # da
        parallel_rows(partial(scores_backward_kernel, scale=self.scale),
                      dattn, attn, q, k, dq, dk)
        return self.qkv.backward(dqkv.reshape(B, T, 3 * H * hd))

    def extra_repr(self):
        return f"dim={self.dim}, heads={self.heads}"
