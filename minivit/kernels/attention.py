"""The per-head arithmetic of attention on blocks of images, and a faster softmax.

Replaces the reference lines of ``MultiHeadSelfAttention.forward`` /
``.backward`` between the qkv split and the head merge
(``minivit/layers/attention.py``). Each kernel writes its results into the
arrays it is given, so ``parallel_rows`` runs blocks of the batch on every
core; the output of a' @ v is written straight into (B, Q, H, hd) order, so
that merging the heads is a free reshape, and dq, dk, dv straight into the
(B, T, 3, H, hd) layout that the forward split. Shapes per block: q, dq
(b, H, Q, hd); k, v, dk, dv (b, H, T, hd); attn, dattn (b, H, Q, T).

With the fused kernels on, short sequences (``use_lanes``) run instead in
``minivit/kernels/fused/attention.py``, which computes W images at once in
SIMD lanes rather than one BLAS call per image and head.
"""

from __future__ import annotations

from functools import partial

from minivit import backend
from minivit.kernels.reductions import dot_last, sum_last
from minivit.kernels.switch import fused_for
from minivit.parallel.threads import parallel_rows


def softmax_of_score_matrices(scores, out):
    """Replaces ``minivit.layers.attention.softmax``: ``out = softmax(scores)``
    over the last axis for scores (..., T, T').

    NumPy takes the max of many short rows slowly, so each (T, T') matrix is
    shifted by its overall max instead (one reduction over a long contiguous
    axis): exp() still cannot overflow, and the shift still cancels. Only if a
    whole row lies so far below its matrix's max that its exps underflow (its
    sum falls below ~1e8 x the smallest normal float) are the row maxima
    computed after all, from the scores as given (left unchanged). A NaN
    score gives NaN out, as in the reference, but through the shared max for
    its whole (T, T') matrix, not only its row.
    """
    xp = backend.xp
    xp.subtract(scores, scores.reshape(*scores.shape[:-2], -1).max(axis=-1)[..., None, None],
                out=out)
    xp.exp(out, out=out)
    sums = sum_last(out)
    if (sums < xp.finfo(scores.dtype).tiny * 1e8).any():   # rare: fall back to row maxima
        xp.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)
        xp.exp(out, out=out)
        sums = sum_last(out)
    out /= sums


def scores_softmax_kernel(q, k, attn, scale):
    """attn = softmax(q k^T * scale)"""
    scores = q @ k.transpose(0, 1, 3, 2)
    if fused_for(scores, attn) and attn.flags.c_contiguous:
        from minivit.kernels.fused import softmax as fused_softmax
        fused_softmax.softmax_scaled(scores, attn, scale)   # minivit/kernels/fused/softmax.py
        return
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
    if fused_for(dattn, attn) and dattn.flags.c_contiguous:
        from minivit.kernels.fused import softmax as fused_softmax
        fused_softmax.softmax_backward_in_place(dattn, attn, scale)
    else:
        dscores -= dot_last(dattn, attn)
        dscores *= attn
        dscores *= scale
    xp.matmul(dscores, k, out=dq)
    xp.matmul(dscores.transpose(0, 1, 3, 2), q, out=dk)


# The lane kernels (minivit/kernels/fused/attention.py) run blocks of W
# images. With fewer images than one block, or more tokens than this (where
# BLAS runs each per-head product well: docs/performance.md), the per-head
# products stay with BLAS.
LANE_MAX_TOKENS = 32


def use_lanes(q, k) -> bool:
    """True where the fused lane kernels run this attention: fused kernels
    on, at least one full block of images, and at most ``LANE_MAX_TOKENS``
    tokens."""
    if k.shape[2] > LANE_MAX_TOKENS or not fused_for(q, k):
        return False
    from minivit.kernels.fused.simd import W                      # numba is there: fused_for
    return q.shape[0] >= W


def forward(q, k, v, scale, dropout):
    """Replaces the reference lines s = q k^T * scale, a = softmax(s),
    a' = dropout(a), o = a' v: (a, o, kept), kept what ``backward`` needs.
    o (B, H, Q, hd) is a view of a (B, Q, H, hd) array, so that merging the
    heads is a free reshape."""
    if use_lanes(q, k):
        from minivit.kernels.fused import attention as lanes
        attn, o, kept = lanes.forward(q, k, v, scale, dropout)
        return attn, o, (lanes.backward, kept)
    xp = backend.xp
    B, H, Q, hd = q.shape
    T = k.shape[2]
    attn = xp.empty((B, H, Q, T), dtype=q.dtype)
    parallel_rows(partial(scores_softmax_kernel, scale=scale), q, k, attn)
    attn_dropped = dropout(attn)
    merged = xp.empty((B, Q, H, hd), dtype=q.dtype)
    o = merged.transpose(0, 2, 1, 3)                             # a view, (B, H, Q, hd)
    parallel_rows(weighted_values_kernel, attn_dropped, v, o)
    return attn, o, (_backward, (q, k, v, attn, attn_dropped))


def backward(dout_heads, kept, scale, dropout_backward):
    """Replaces the reference backward lines from do (B, H, Q, hd) to dqkv
    (B, T, 3D), given what ``forward`` kept."""
    backward_of_forward, arrays = kept
    return backward_of_forward(dout_heads, arrays, scale, dropout_backward)


def _backward(dout_heads, kept, scale, dropout_backward):
    q, k, v, attn, attn_dropped = kept
    xp = backend.xp
    B, H, T, hd = k.shape
    Q = q.shape[2]
    dqkv = xp.empty((B, T, 3, H, hd), dtype=q.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                   # views, (B, H, T, hd)
    if Q < T:
        dq[:, :, Q:] = 0                                         # tokens that asked nothing
        dq = dq[:, :, :Q]
    dattn_dropped = xp.empty_like(attn)
    parallel_rows(values_backward_kernel, dout_heads, v, attn_dropped, dattn_dropped, dv)
    dattn = dropout_backward(dattn_dropped)                      # da
    parallel_rows(partial(scores_backward_kernel, scale=scale), dattn, attn, q, k, dq, dk)
    return dqkv.reshape(B, T, 3 * H * hd)
