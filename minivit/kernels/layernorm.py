"""LayerNorm on blocks of rows, in place, with row reductions through BLAS.

Replaces the lines of ``LayerNorm.forward`` / ``LayerNorm.backward``
(``minivit/layers/layernorm.py``). Two row means need no (R, D) temporary
of their own, because dxhat = dy * gamma: mean(dxhat) = dy @ gamma / D and
mean(dxhat * xhat) = (dy * xhat) @ gamma / D, and dy * xhat is needed for
dgamma anyway. Each row is independent, so ``parallel_rows`` runs the
kernels on blocks of rows on every core. Under ``no_grad`` xhat is not kept,
so y's buffer holds it on the way.
"""

from __future__ import annotations

from functools import partial

from minivit import backend
from minivit.kernels.reductions import dot_last, mean_last, sum_rows
from minivit.kernels.switch import fused_for
from minivit.module import is_grad_enabled
from minivit.parallel.threads import parallel_rows


def layernorm_forward_kernel(x, xhat, rstd, y, gamma, beta, eps):
    """Rows (R, D): write xhat, rstd (R, 1) and y = xhat * gamma + beta."""
    xp = backend.xp
    D = x.shape[-1]
    xp.subtract(x, mean_last(x), out=xhat)                  # x - mu
    var = dot_last(xhat, xhat) / D                          # mean((x - mu)^2)
    xp.sqrt(var + eps, out=rstd)
    xp.divide(1.0, rstd, out=rstd)                          # rstd = 1 / sqrt(var + eps)
    xhat *= rstd                                            # xhat = (x - mu) * rstd
    xp.multiply(xhat, gamma, out=y)                         # (y may be xhat itself)
    y += beta                                               # y = xhat * gamma + beta


def layernorm_backward_kernel(dout, xhat, rstd, dout_xhat, dx, gamma):
    """Rows (R, D): write dout_xhat = dy * xhat (for dgamma) and dx."""
    xp = backend.xp
    D = dout.shape[-1]
    xp.multiply(dout, xhat, out=dout_xhat)                  # dy * xhat
    mean_dxhat = (dout @ gamma)[:, None] / D                # mean(dxhat)          (R, 1)
    mean_dxhat_xhat = (dout_xhat @ gamma)[:, None] / D      # mean(dxhat * xhat)   (R, 1)
    xp.multiply(dout, gamma, out=dx)                        # dxhat
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd                                              # dx = rstd * (...)


def forward(x_rows, gamma, beta, eps):
    """Replaces ``LayerNorm.forward``'s reference lines on rows (R, D):
    (y, xhat, rstd). With numba: ``minivit/kernels/fused/layernorm.py``."""
    if fused_for(x_rows, gamma, beta):
        from minivit.kernels.fused import layernorm as fused_layernorm
        return fused_layernorm.forward(x_rows, gamma, beta, eps)
    xp = backend.xp
    y = xp.empty_like(x_rows)
    xhat = xp.empty_like(x_rows) if is_grad_enabled() else y
    rstd = xp.empty((x_rows.shape[0], 1), dtype=x_rows.dtype)
    parallel_rows(partial(layernorm_forward_kernel, gamma=gamma, beta=beta, eps=eps),
                  x_rows, xhat, rstd, y)
    return y, xhat, rstd


def backward(dout_rows, xhat, rstd, gamma):
    """Replaces ``LayerNorm.backward``'s reference lines on rows (R, D):
    (dx, dgamma, dbeta). With numba: ``minivit/kernels/fused/layernorm.py``."""
    if fused_for(dout_rows, xhat, rstd, gamma):
        from minivit.kernels.fused import layernorm as fused_layernorm
        return fused_layernorm.backward(dout_rows, xhat, rstd, gamma)
    xp = backend.xp
    dout_xhat, dx = xp.empty_like(dout_rows), xp.empty_like(dout_rows)
    parallel_rows(partial(layernorm_backward_kernel, gamma=gamma),
                  dout_rows, xhat, rstd, dout_xhat, dx)
    return dx, sum_rows(dout_xhat), sum_rows(dout_rows)
