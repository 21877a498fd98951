"""LayerNorm over the last axis.

Forward (per row of D values)           Backward (given dy)
  mu    = mean(x)                         dgamma += sum_rows dy * xhat
  var   = mean((x - mu)^2)                dbeta  += sum_rows dy
  rstd  = 1 / sqrt(var + eps)             dxhat   = dy * gamma
  xhat  = (x - mu) * rstd                 dx = rstd * (dxhat - mean(dxhat)
  y     = xhat * gamma + beta                          - xhat * mean(dxhat * xhat))

The dx line is the three paths from x to xhat folded together: directly,
through mu (hence -mean(dxhat)) and through var (hence -xhat*mean(dxhat*xhat)).

Two row means need no (R, D) temporary of their own, because dxhat = dy * gamma:
mean(dxhat) = dy @ gamma / D and mean(dxhat * xhat) = (dy * xhat) @ gamma / D,
and dy * xhat is needed for dgamma anyway.

Each row is independent, so the row-wise work is written as kernels on a
block of rows, which ``parallel_rows`` runs on every core.
"""

from __future__ import annotations

from functools import partial

from minivit import backend, init
from minivit.module import Module, Parameter, is_grad_enabled
from minivit.ops import dot_last, mean_last, parallel_rows, sum_rows


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


class LayerNorm(Module):
    """Shapes: x (..., dim) -> y (..., dim). Parameters ``weight`` (gamma) and
    ``bias`` (beta), both (dim,), initialised to ones and zeros."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(init.ones((dim,)))
        self.bias = Parameter(init.zeros((dim,)))

    def forward(self, x):
        xp = backend.xp
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"LayerNorm expected last dimension {self.dim}, got shape {tuple(x.shape)}"
            )
        x_rows = x.reshape(-1, self.dim)                    # (R, D)
        y = xp.empty_like(x_rows)
        # Under no_grad xhat is not kept, so y itself holds it on the way.
        xhat = xp.empty_like(x_rows) if is_grad_enabled() else y
        rstd = xp.empty((x_rows.shape[0], 1), dtype=x.dtype)
        parallel_rows(partial(layernorm_forward_kernel, gamma=self.weight.data,
                              beta=self.bias.data, eps=self.eps), x_rows, xhat, rstd, y)
        self._keep(xhat, rstd)
        return y.reshape(x.shape)

    def backward(self, dout):
        xp = backend.xp
        xhat, rstd = self._saved()
        dout_rows = dout.reshape(-1, self.dim)              # (R, D)
        dout_xhat, dx = xp.empty_like(dout_rows), xp.empty_like(dout_rows)
        parallel_rows(partial(layernorm_backward_kernel, gamma=self.weight.data),
                      dout_rows, xhat, rstd, dout_xhat, dx)
        self.weight.grad += sum_rows(dout_xhat)             # dgamma = sum_rows dy * xhat
        self.bias.grad += sum_rows(dout_rows)               # dbeta  = sum_rows dy
        return dx.reshape(dout.shape)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"
