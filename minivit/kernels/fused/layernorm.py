"""LayerNorm forward and backward, one compiled pass per row.

Replaces ``minivit.kernels.layernorm.forward`` / ``.backward`` (and so the
reference lines of ``LayerNorm.forward`` / ``.backward`` in
``minivit/layers/layernorm.py``). Per row of D values the forward reads x
once for its mean, once more (from cache) for the variance, and writes xhat
and y in the same loop; the backward takes both means, mean(dxhat) and
mean(dxhat * xhat), in one loop and writes dx in a second over the same row.
The parameter gradients, sums over all rows, are summed per block of rows
(each block its own sums, so no two threads write one) and the blocks'
sums added at the end, in row order. Arithmetic stays in the arrays' dtype, as in the reference.
"""

from __future__ import annotations

import math

import numpy
from numba import njit

from minivit.kernels import fused
from minivit.module import is_grad_enabled
from minivit.parallel import threads

# reductions may be reordered (so they vectorise); nothing else is relaxed,
# so NaN and inf propagate as in the reference
_REDUCE = {"reassoc", "contract"}


# The loop over rows and each row's work in one compiled function: a row
# function called per row is a call with every array passed, on each row,
# which costs more than a short row's arithmetic.
@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REDUCE)
def _forward_rows(x, xhat, rstd, y, gamma, beta, eps, keep_xhat):
    R, D = x.shape
    t = x.dtype.type
    inv_d = t(1.0) / t(D)
    for i in range(R):
        total = t(0.0)
        for j in range(D):
            total += x[i, j]
        mu = total * inv_d
        sq = t(0.0)
        for j in range(D):
            c = x[i, j] - mu
            sq += c * c
        r = t(1.0) / math.sqrt(sq * inv_d + eps)
        rstd[i, 0] = r
        if keep_xhat:             # tested outside the loop over j, so that it vectorises
            for j in range(D):
                h = (x[i, j] - mu) * r
                xhat[i, j] = h
                y[i, j] = h * gamma[j] + beta[j]
        else:
            for j in range(D):
                y[i, j] = (x[i, j] - mu) * r * gamma[j] + beta[j]


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REDUCE)
def _backward_rows(dout, xhat, rstd, gamma, dx, dgamma, dbeta, lo, hi):
    """Rows lo..hi-1: dx, and their sums of dy * xhat and dy into dgamma, dbeta."""
    D = dout.shape[1]
    t = dout.dtype.type
    inv_d = t(1.0) / t(D)
    for i in range(lo, hi):
        s1 = t(0.0)
        s2 = t(0.0)
        for j in range(D):
            dxhat = dout[i, j] * gamma[j]
            s1 += dxhat                                  # sum(dxhat)
            s2 += dxhat * xhat[i, j]                     # sum(dxhat * xhat)
        m1 = s1 * inv_d
        m2 = s2 * inv_d
        r = rstd[i, 0]
        for j in range(D):
            h = xhat[i, j]
            dx[i, j] = r * (dout[i, j] * gamma[j] - m1 - h * m2)
            dgamma[j] += dout[i, j] * h
            dbeta[j] += dout[i, j]


def _c(a):
    return numpy.ascontiguousarray(a)


def forward(x_rows, gamma, beta, eps):
    """Replaces ``minivit.kernels.layernorm.forward`` on rows (R, D):
    (y, xhat, rstd). Under ``no_grad`` xhat is not kept (y stands in)."""
    x_rows, gamma, beta = _c(x_rows), _c(gamma), _c(beta)
    keep = is_grad_enabled()
    y = numpy.empty_like(x_rows)
    # not written without grad, but not y either: overlapping arrays would
    # keep the loop from being vectorised (an untouched allocation is free)
    xhat = numpy.empty_like(x_rows)
    rstd = numpy.empty((x_rows.shape[0], 1), dtype=x_rows.dtype)
    fused.run(_forward_rows, (x_rows, xhat, rstd, y), (gamma, beta, x_rows.dtype.type(eps), keep))
    return y, (xhat if keep else y), rstd


def backward(dout_rows, xhat, rstd, gamma):
    """Replaces ``minivit.kernels.layernorm.backward`` on rows (R, D):
    (dx, dgamma, dbeta)."""
    dout_rows, xhat, rstd, gamma = _c(dout_rows), _c(xhat), _c(rstd), _c(gamma)
    R, D = dout_rows.shape
    dx = numpy.empty_like(dout_rows)
    if dout_rows.size < threads.PARALLEL_MIN_ELEMENTS:     # one block, as parallel_rows would
        dgamma = numpy.zeros(D, dtype=dout_rows.dtype)
        dbeta = numpy.zeros(D, dtype=dout_rows.dtype)
        _backward_rows(dout_rows, xhat, rstd, gamma, dx, dgamma, dbeta, 0, R)
        return dx, dgamma, dbeta
    parts = []                           # (first row, dgamma, dbeta) of each block
    row_bytes = dout_rows.strides[0]

    def block(dout_b, xhat_b, rstd_b, dx_b):
        dgamma_b = numpy.zeros(D, dtype=dout_rows.dtype)
        dbeta_b = numpy.zeros(D, dtype=dout_rows.dtype)
        _backward_rows(dout_b, xhat_b, rstd_b, gamma, dx_b, dgamma_b, dbeta_b, 0, dout_b.shape[0])
        first = (dout_b.ctypes.data - dout_rows.ctypes.data) // row_bytes if R else 0
        parts.append((first, dgamma_b, dbeta_b))   # list.append: safe across threads

    fused.run(block, (dout_rows, xhat, rstd, dx))
    parts.sort(key=lambda part: part[0])           # the same order of sums every run
    dgamma = numpy.zeros(D, dtype=dout_rows.dtype)
    dbeta = numpy.zeros(D, dtype=dout_rows.dtype)
    for _, dgamma_b, dbeta_b in parts:
        dgamma += dgamma_b
        dbeta += dbeta_b
    return dx, dgamma, dbeta
