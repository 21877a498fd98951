"""Attention's per-head arithmetic for W images at once, one image in each SIMD lane.

Replaces ``minivit.kernels.attention``'s per-head products and softmax (the
reference lines of ``MultiHeadSelfAttention.forward`` / ``.backward`` in
``minivit/layers/attention.py`` between the qkv split and the head merge)
where the heads are small: there each product of a few tokens by a few
values is one BLAS call, hundreds a step, each mostly overhead.

Here the batch is cut into blocks of W images. Within a block every value
is a run of W lanes, one per image (``minivit/kernels/fused/lanes.py``'s
``to_lanes`` copies q, k, v into that layout: q of block n, head h is
``ql[n, h]``, (Q, hd) runs of W), so each product is the textbook triple
loop with W images in every multiply-add::

    s[i, j]  = scale * sum_d q[i, d] k[j, d]     da'[i, j] = sum_d do[i, d] v[j, d]
    a[i, :]  = softmax(s[i, :])                  dv[j, d]  = sum_i a'[i, j] do[i, d]
    o[i, d]  = sum_j a'[i, j] v[j, d]            ds[i, j]  = a (da - sum_j da a) * scale
                                                 dq[i, d]  = sum_j ds[i, j] k[j, d]
                                                 dk[j, d]  = sum_i ds[i, j] q[i, d]

``lanes.product`` is that loop, once for all six products (strides say
which operand is transposed); its running sums are W-lane values
(``minivit/kernels/fused/simd.py``), eight at a time so that the
multiply-adds do not wait on each other. A block's q, k, v of one head fit
in the first-level cache. A last block with fewer than W images is padded
with zero lanes, which are never copied out. The softmax shifts each row by
its own max (per image), as the reference does, so a NaN or +inf score
makes its row NaN, as there, and a -inf score gets probability 0.
"""

from __future__ import annotations

import numpy
from numba import njit

from minivit.kernels.fused.exp import exp
from minivit.kernels.fused.lanes import (from_lanes, from_lanes_blocks, product, to_lanes,
                                         to_lanes_blocks)
from minivit.kernels.fused.simd import W, add, div, fma, load, maximum, mul, splat, store, sub
from minivit.parallel.threads import parallel_shares

_KW = dict(cache=True, error_model="numpy", nogil=True)


@njit(**_KW)
def _forward_scores(q, k, v, ql, kl, vl, al, probs, scale, n0, n1):
    """Blocks n0..n1: q (B, H, Q, hd), k, v (B, H, T, hd) into ql, kl, vl
    (nb, H, T, hd W; q's first Q rows); a = softmax(q k^T * scale) into al
    (nb, H, Q, T W) and probs (B, H, Q, T)."""
    B, H, Q, hd = q.shape
    T = k.shape[2]
    af = al.reshape(-1)
    for n in range(n0, n1):
        to_lanes(q, ql, n)
        to_lanes(k, kl, n)
        to_lanes(v, vl, n)
        for h in range(H):
            a0 = (n * H + h) * Q * T * W
            product(ql[n, h].reshape(-1), 0, hd * W, W, kl[n, h].reshape(-1), 0, W, hd * W,
                    af, a0, T * W, W, Q, hd, T, scale)
            for i in range(Q):
                row = a0 + i * T * W
                top = load(af, row)
                for j in range(1, T):
                    top = maximum(top, load(af, row + j * W))
                for j in range(T):
                    store(af, row + j * W, sub(load(af, row + j * W), top))
                for m in range(T * W):      # the whole row in one loop, so that exp vectorises
                    al[n, h, i, m] = exp(al[n, h, i, m])
                total = load(af, row)
                for j in range(1, T):
                    total = add(total, load(af, row + j * W))
                inverse = div(splat(q.dtype.type(1.0)), total)
                for j in range(T):
                    store(af, row + j * W, mul(load(af, row + j * W), inverse))
        from_lanes(al, probs, n)


@njit(**_KW)
def _forward_values(al, vl, ol, out, n0, n1):
    """o = a' v for blocks n0..n1 into the first Q rows of ol (nb, H, >= Q,
    hd W), then out to out (B, H, Q, hd) (any strides)."""
    B, H, Q, hd = out.shape
    T = vl.shape[2]
    for n in range(n0, n1):
        for h in range(H):
            product(al[n, h].reshape(-1), 0, T * W, W, vl[n, h].reshape(-1), 0, hd * W, W,
                    ol[n, h].reshape(-1), 0, hd * W, W, Q, T, hd, 1.0)
        from_lanes(ol, out, n)


@njit(**_KW)
def _backward_values(dout, dol, al, vl, dal, dvl, dv, n0, n1):
    """Blocks n0..n1: do (B, H, Q, hd) into lanes; da' = do v^T into dal
    (nb, H, Q, T W); dv = a'^T do into dvl (nb, H, T, hd W), then out to dv
    (B, H, T, hd) (any strides)."""
    B, H, Q, hd = dout.shape
    T = vl.shape[2]
    for n in range(n0, n1):
        to_lanes(dout, dol, n)
        for h in range(H):
            do_h = dol[n, h].reshape(-1)
            product(al[n, h].reshape(-1), 0, W, T * W, do_h, 0, hd * W, W,
                    dvl[n, h].reshape(-1), 0, hd * W, W, T, Q, hd, 1.0)
            product(do_h, 0, hd * W, W, vl[n, h].reshape(-1), 0, W, hd * W,
                    dal[n, h].reshape(-1), 0, T * W, W, Q, hd, T, 1.0)
        from_lanes(dvl, dv, n)


@njit(**_KW)
def _backward_scores(dal, al, ql, kl, dql, dkl, dq, dk, scale, n0, n1):
    """Blocks n0..n1: ds = a (da - sum(da a)) * scale in place in dal; dq = ds k
    into dql (nb, H, Q, hd W) and dk = ds^T q into dkl (nb, H, T, hd W), then
    out to dq (B, H, Q, hd) and dk (B, H, T, hd) (any strides)."""
    B, H, Q, hd = dq.shape
    T = kl.shape[2]
    sc = splat(kl.dtype.type(scale))
    for n in range(n0, n1):
        for h in range(H):
            ds = dal[n, h].reshape(-1)
            a = al[n, h].reshape(-1)
            for i in range(Q):
                row = i * T * W
                dot = mul(load(ds, row), load(a, row))
                for j in range(1, T):
                    dot = fma(load(ds, row + j * W), load(a, row + j * W), dot)
                for j in range(T):
                    p = row + j * W
                    store(ds, p, mul(mul(load(a, p), sub(load(ds, p), dot)), sc))
            product(ds, 0, T * W, W, kl[n, h].reshape(-1), 0, hd * W, W,
                    dql[n, h].reshape(-1), 0, hd * W, W, Q, T, hd, 1.0)
            product(ds, 0, W, T * W, ql[n, h].reshape(-1), 0, hd * W, W,
                    dkl[n, h].reshape(-1), 0, hd * W, W, T, Q, hd, 1.0)
        from_lanes(dql, dq, n)
        from_lanes(dkl, dk, n)


def _blocks(batch):
    return -(-batch // W)


def _run(kernel, blocks, *args):
    """kernel(*args, n0, n1) over the blocks, one share per thread."""
    parallel_shares(lambda lo, hi: kernel(*args, lo, hi), blocks)


def forward(q, k, v, scale, dropout):
    """Replaces ``minivit.kernels.attention.forward``'s work: (a, o, kept) with
    a (B, H, Q, T) the probabilities, o (B, H, Q, hd) a view of a (B, Q, H, hd)
    array, kept what ``backward`` needs."""
    B, H, Q, hd = q.shape
    T = k.shape[2]
    nb = _blocks(B)
    dtype = q.dtype
    ql, kl, vl, ol = numpy.empty((4, nb, H, T, hd * W), dtype=dtype)   # q, o: Q rows used
    al = numpy.empty((nb, H, Q, T * W), dtype=dtype)
    attn = numpy.empty((B, H, Q, T), dtype=dtype)
    _run(_forward_scores, nb, q, k, v, ql, kl, vl, al, attn, dtype.type(scale))
    attn_dropped = dropout(attn)
    al_dropped = al
    if attn_dropped is not attn:                  # dropout's mask, from the (B, H, Q, T) array
        al_dropped = numpy.empty_like(al)                        # to_lanes zeroes the padding
        _run(to_lanes_blocks, nb, numpy.ascontiguousarray(attn_dropped), al_dropped)
    merged = numpy.empty((B, Q, H, hd), dtype=dtype)
    o = merged.transpose(0, 2, 1, 3)                             # a view, (B, H, Q, hd)
    _run(_forward_values, nb, al_dropped, vl, ol, o)
    return attn, o, (ql, kl, vl, al, al_dropped)


def backward(dout_heads, kept, scale, dropout_backward):
    """Replaces ``minivit.kernels.attention.backward``'s work: dqkv (B, T, 3D)
    from do (B, H, Q, hd) and what ``forward`` kept."""
    ql, kl, vl, al, al_dropped = kept
    B, H, Q, hd = dout_heads.shape
    T = kl.shape[2]
    nb = ql.shape[0]
    dtype = ql.dtype
    dqkv = numpy.empty((B, T, 3, H, hd), dtype=dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                   # views, (B, H, T, hd)
    if Q < T:
        dq[:, :, Q:] = 0                                         # tokens that asked nothing
        dq = dq[:, :, :Q]
    dol = numpy.empty((nb, H, Q, hd * W), dtype=dtype)
    dal = numpy.empty_like(al)
    _run(_backward_values, nb, dout_heads, dol, al_dropped, vl, dal, numpy.empty_like(kl), dv)
    if al_dropped is not al:                      # dropout's mask, on the (B, H, Q, T) array
        dattn_dropped = numpy.empty((B, H, Q, T), dtype=dtype)
        _run(from_lanes_blocks, nb, dal, dattn_dropped)
        _run(to_lanes_blocks, nb, numpy.ascontiguousarray(dropout_backward(dattn_dropped)), dal)
    _run(_backward_scores, nb, dal, al, ql, kl, dol, numpy.empty_like(kl), dq, dk,   # dol: dq's
         dtype.type(scale))
    return dqkv.reshape(B, T, 3 * H * hd)
