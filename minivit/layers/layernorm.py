"""LayerNorm over the last axis.

Forward (per row of D values)           Backward (given dy)
  mu    = mean(x)                         dgamma += sum_rows dy * xhat
  var   = mean((x - mu)^2)                dbeta  += sum_rows dy
  rstd  = 1 / sqrt(var + eps)             dxhat   = dy * gamma
  xhat  = (x - mu) * rstd                 dx = rstd * (dxhat - mean(dxhat)
  y     = xhat * gamma + beta                          - xhat * mean(dxhat * xhat))

The dx line is the three paths from x to xhat folded together: directly,
through mu (hence -mean(dxhat)) and through var (hence -xhat*mean(dxhat*xhat)).
"""

from __future__ import annotations

from minivit import backend, init
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
        mu = x.mean(axis=-1, keepdims=True)                 # (..., 1)
        centered = x - mu
        var = (centered * centered).mean(axis=-1, keepdims=True)
        rstd = 1.0 / xp.sqrt(var + self.eps)                # (..., 1)
        xhat = centered * rstd                              # (..., D)
        self.cache = (xhat, rstd)
        return xhat * self.weight.data + self.bias.data

    def backward(self, dout):
        xhat, rstd = self._saved()
        D = self.dim
        dout_rows = dout.reshape(-1, D)
        self.weight.grad += (dout_rows * xhat.reshape(-1, D)).sum(axis=0)  # dgamma
        self.bias.grad += dout_rows.sum(axis=0)                            # dbeta
        dxhat = dout * self.weight.data                                    # (..., D)
        mean_dxhat = dxhat.mean(axis=-1, keepdims=True)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)
        return rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"
