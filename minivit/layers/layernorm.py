"""LayerNorm over the last axis.

Forward (per row of D values)           Backward (given dy)
  mu    = mean(x)                         dgamma += sum_rows dy * xhat
  var   = mean((x - mu)^2)                dbeta  += sum_rows dy
  rstd  = 1 / sqrt(var + eps)             dxhat   = dy * gamma
  xhat  = (x - mu) * rstd                 dx = rstd * (dxhat - mean(dxhat)
  y     = xhat * gamma + beta                          - xhat * mean(dxhat * xhat))

The dx line is the three paths from x to xhat folded together: directly,
through mu (hence -mean(dxhat)) and through var (hence -xhat*mean(dxhat*xhat)).
The forward keeps xhat and rstd for the backward. The same function, faster
(in place, on blocks of rows on every core): ``minivit/kernels/layernorm.py``.
"""

from __future__ import annotations

from minivit import backend, init, kernels
from minivit.module import Module, Parameter


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
        gamma, beta = self.weight.data, self.bias.data
        x_rows = x.reshape(-1, self.dim)                             # (R, D)
        if kernels.enabled():           # the same function, faster: minivit/kernels/layernorm.py
            y, xhat, rstd = kernels.layernorm.forward(x_rows, gamma, beta, self.eps)
        else:
            mu = x_rows.mean(axis=-1, keepdims=True)                 # (R, 1)
            var = ((x_rows - mu) ** 2).mean(axis=-1, keepdims=True)  # (R, 1)
            rstd = 1 / xp.sqrt(var + self.eps)                       # (R, 1)
            xhat = (x_rows - mu) * rstd                              # (R, D)
            y = xhat * gamma + beta                                  # (R, D)
        self._keep(xhat, rstd)
        return y.reshape(x.shape)

    def backward(self, dout):
        xhat, rstd = self._saved()
        gamma = self.weight.data
        dout_rows = dout.reshape(-1, self.dim)                       # (R, D)
        if kernels.enabled():           # the same function, faster: minivit/kernels/layernorm.py
            dx, dgamma, dbeta = kernels.layernorm.backward(dout_rows, xhat, rstd, gamma)
        else:
            dgamma = (dout_rows * xhat).sum(axis=0)                  # (D,)
            dbeta = dout_rows.sum(axis=0)                            # (D,)
            dxhat = dout_rows * gamma                                # (R, D)
            dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                         - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        self.weight.grad += dgamma                                   # dgamma += sum_rows dy * xhat
        self.bias.grad += dbeta                                      # dbeta  += sum_rows dy
        return dx.reshape(dout.shape)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"
