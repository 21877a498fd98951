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
"""

from __future__ import annotations

from minivit import backend, init
from minivit.module import Module, Parameter
from minivit.ops import dot_last, mean_last, sum_rows


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
        xhat = x - mean_last(x)                             # x - mu        (..., D)
        var = dot_last(xhat, xhat) / self.dim               # mean((x - mu)^2)  (..., 1)
        rstd = 1.0 / xp.sqrt(var + self.eps)                # (..., 1)
        xhat *= rstd                                        # xhat = (x - mu) * rstd
        self.cache = (xhat, rstd)
        y = xhat * self.weight.data
        y += self.bias.data
        return y

    def backward(self, dout):
        xp = backend.xp
        xhat, rstd = self._saved()
        D = self.dim
        gamma = self.weight.data
        dout_rows = dout.reshape(-1, D)                     # (R, D)
        xhat_rows = xhat.reshape(-1, D)
        dout_xhat = dout_rows * xhat_rows                   # dy * xhat     (R, D)
        self.weight.grad += sum_rows(dout_xhat)             # dgamma = sum_rows dy * xhat
        self.bias.grad += sum_rows(dout_rows)               # dbeta  = sum_rows dy
        mean_dxhat = (dout_rows @ gamma)[:, None] / D       # mean(dxhat)          (R, 1)
        mean_dxhat_xhat = (dout_xhat @ gamma)[:, None] / D  # mean(dxhat * xhat)   (R, 1)
        dx = dout_rows * gamma                              # dxhat                (R, D)
        dx -= mean_dxhat
        dx -= xp.multiply(xhat_rows, mean_dxhat_xhat, out=dout_xhat)  # reuses the buffer
        dx *= rstd.reshape(-1, 1)
        return dx.reshape(dout.shape)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"
