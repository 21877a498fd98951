"""Linear: y = x W^T + b, over any number of leading dimensions.

Forward                               Backward (given dy = dL/dy)
  y = x @ W.T + b                       dx = dy @ W
                                        dW += dy^T @ x   (summed over all rows)
                                        db += sum of dy over all rows

Leading dimensions are flattened into rows first, (..., in) -> (R, in), so
each product is one 2-D matmul and every row adds its outer product to dW.
The same function, faster (a share of the rows per core):
``minivit/kernels/linear.py``.
"""

from __future__ import annotations

from minivit import init, kernels
from minivit.module import Module, Parameter


class Linear(Module):
    """Affine map of the last axis.

    Shapes: x (..., in_features) -> y (..., out_features).
    Parameters: ``weight`` (out_features, in_features) as in PyTorch,
    ``bias`` (out_features,). Initialised like timm's ViT: truncated normal
    std 0.02 for the weight, zeros for the bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.trunc_normal((out_features, in_features), std=0.02))
        self.bias = Parameter(init.zeros((out_features,))) if bias else None

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expected input with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        self._keep(x)
        W = self.weight.data                                       # (out, in)
        b = self.bias.data if self.bias is not None else None      # (out,)
        x_rows = x.reshape(-1, self.in_features)                   # (R, in)
        if kernels.enabled():            # the same function, faster: minivit/kernels/linear.py
            y = kernels.linear.forward(x_rows, W, b)
        else:
            y = x_rows @ W.T                                       # (R, out)
            if b is not None:
                y = y + b                                          # y = x W^T + b
        return y.reshape(*x.shape[:-1], self.out_features)         # (..., out)

    def backward(self, dout):
        x = self._saved()
        x_rows = x.reshape(-1, self.in_features)                   # (R, in)
        dout_rows = dout.reshape(-1, self.out_features)            # (R, out)
        self.weight.grad += dout_rows.T @ x_rows                   # dW += dy^T x   (out, in)
        if self.bias is not None:
            if kernels.enabled():    # the same function, faster: minivit/kernels/reductions.py
                self.bias.grad += kernels.reductions.sum_rows(dout_rows)
            else:
                self.bias.grad += dout_rows.sum(axis=0)            # db += sum_rows dy
        dx_rows = dout_rows @ self.weight.data                     # dx = dy W     (R, in)
        return dx_rows.reshape(x.shape)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
