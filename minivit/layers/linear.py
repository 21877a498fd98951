"""Linear: y = x W^T + b, over any number of leading dimensions.

Forward                               Backward (given dy = dL/dy)
  y = x @ W.T + b                       dx = dy @ W
                                        dW += dy^T @ x   (summed over all rows)
                                        db += sum of dy over all rows
"""

from __future__ import annotations

from functools import partial

from minivit import backend, init
from minivit.module import Module, Parameter
from minivit.ops import parallel_rows, sum_rows


def linear_forward_kernel(x_rows, y_rows, weight, bias):
    """Rows (R, in) -> (R, out): y = x W^T + b."""
    backend.xp.matmul(x_rows, weight.T, out=y_rows)
    if bias is not None:
        y_rows += bias


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
        # 2-D matmuls over all rows: NumPy's stacked matmul would loop over the
        # leading dims. Many rows: one share of them per core, in minivit's
        # threads (BLAS's own would keep spinning after the call, taking cores
        # from the next layer's kernels). Few rows (small batches): one BLAS
        # call, which splits W instead of packing all of it on every core.
        weight = self.weight.data
        x_rows = x.reshape(-1, self.in_features)               # (R, in)
        y = backend.xp.empty((x_rows.shape[0], self.out_features),      # (R, out)
                             dtype=backend.xp.result_type(x_rows, weight))
        kernel = partial(linear_forward_kernel, weight=weight,
                         bias=self.bias.data if self.bias is not None else None)
        if x_rows.shape[0] >= self.out_features:
            parallel_rows(kernel, x_rows, y, cache_blocks=False)
        else:
            kernel(x_rows, y)                                  # y = x W^T + b
        return y.reshape(*x.shape[:-1], self.out_features)     # (..., out)

    def backward(self, dout):
        x = self._saved()
        # Flatten leading dims: every row of x contributes one outer product to dW.
        x_rows = x.reshape(-1, self.in_features)           # (R, in)
        dout_rows = dout.reshape(-1, self.out_features)    # (R, out)
        self.weight.grad += dout_rows.T @ x_rows           # dW = dy^T x   (out, in)
        if self.bias is not None:
            self.bias.grad += sum_rows(dout_rows)           # db = sum_rows dy
        dx_rows = dout_rows @ self.weight.data             # dx = dy W     (R, in)
        return dx_rows.reshape(x.shape)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
