"""LayerNorm forward and backward, one compiled pass per row.

Replaces ``minivit.kernels.layernorm.forward`` / ``.backward`` (and so the
reference lines of ``LayerNorm.forward`` / ``.backward`` in
``minivit/layers/layernorm.py``). Per row of D values the forward reads x
once for its mean, once more (from cache) for the variance, and writes xhat
and y in the same loop; the backward takes both means, mean(dxhat) and
mean(dxhat * xhat), in one loop and writes dx in a second over the same row.
The parameter gradients, sums over all rows, are summed per chunk of rows
(one chunk per thread, no two threads writing one sum) and the chunks added
at the end. Arithmetic stays in the arrays' dtype, as in the reference.
"""

from __future__ import annotations

import math

import numpy
from numba import njit, prange

from minivit.kernels import fused
from minivit.module import is_grad_enabled

# reductions may be reordered (so they vectorise); nothing else is relaxed,
# so NaN and inf propagate as in the reference
_REDUCE = {"reassoc", "contract"}
_CHUNKS = 16             # chunks of rows for the parameter-gradient sums


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REDUCE)
def _forward_row(x, xhat, rstd, y, gamma, beta, eps, i, keep_xhat):
    D = x.shape[1]
    t = x.dtype.type
    inv_d = t(1.0) / t(D)
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
    for j in range(D):
        h = (x[i, j] - mu) * r
        if keep_xhat:
            xhat[i, j] = h
        y[i, j] = h * gamma[j] + beta[j]


@njit(cache=True, error_model="numpy", nogil=True)
def _forward_serial(x, xhat, rstd, y, gamma, beta, eps, keep_xhat):
    for i in range(x.shape[0]):
        _forward_row(x, xhat, rstd, y, gamma, beta, eps, i, keep_xhat)


@njit(cache=True, error_model="numpy", parallel=True)
def _forward_parallel(x, xhat, rstd, y, gamma, beta, eps, keep_xhat):
    for i in prange(x.shape[0]):
        _forward_row(x, xhat, rstd, y, gamma, beta, eps, i, keep_xhat)


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


@njit(cache=True, error_model="numpy", nogil=True)
def _backward_serial(dout, xhat, rstd, gamma, dx, dgamma, dbeta):
    R = dout.shape[0]
    chunks = dgamma.shape[0]
    for c in range(chunks):
        _backward_rows(dout, xhat, rstd, gamma, dx, dgamma[c], dbeta[c],
                       R * c // chunks, R * (c + 1) // chunks)


@njit(cache=True, error_model="numpy", parallel=True)
def _backward_parallel(dout, xhat, rstd, gamma, dx, dgamma, dbeta):
    R = dout.shape[0]
    chunks = dgamma.shape[0]
    for c in prange(chunks):
        _backward_rows(dout, xhat, rstd, gamma, dx, dgamma[c], dbeta[c],
                       R * c // chunks, R * (c + 1) // chunks)


def _c(a):
    return numpy.ascontiguousarray(a)


def forward(x_rows, gamma, beta, eps):
    """Replaces ``minivit.kernels.layernorm.forward`` on rows (R, D):
    (y, xhat, rstd). Under ``no_grad`` xhat is not kept (y stands in)."""
    x_rows, gamma, beta = _c(x_rows), _c(gamma), _c(beta)
    keep = is_grad_enabled()
    y = numpy.empty_like(x_rows)
    xhat = numpy.empty_like(x_rows) if keep else y
    rstd = numpy.empty((x_rows.shape[0], 1), dtype=x_rows.dtype)
    fused.run(_forward_serial, _forward_parallel, x_rows.size,
              x_rows, xhat, rstd, y, gamma, beta, x_rows.dtype.type(eps), keep)
    return y, xhat, rstd


def backward(dout_rows, xhat, rstd, gamma):
    """Replaces ``minivit.kernels.layernorm.backward`` on rows (R, D):
    (dx, dgamma, dbeta)."""
    dout_rows, xhat, rstd, gamma = _c(dout_rows), _c(xhat), _c(rstd), _c(gamma)
    R, D = dout_rows.shape
    chunks = max(1, min(_CHUNKS, R))
    dx = numpy.empty_like(dout_rows)
    dgamma = numpy.zeros((chunks, D), dtype=dout_rows.dtype)
    dbeta = numpy.zeros((chunks, D), dtype=dout_rows.dtype)
    fused.run(_backward_serial, _backward_parallel, dout_rows.size,
              dout_rows, xhat, rstd, gamma, dx, dgamma, dbeta)
    return dx, dgamma.sum(axis=0), dbeta.sum(axis=0)
