"""y = x W^T + b with one share of the rows per core.

Replaces ``Linear.forward``'s reference lines (``minivit/layers/linear.py``).
Many rows: one share of them per core, in minivit's threads (BLAS's own
would keep spinning after the call, taking cores from the next layer's
kernels). Few rows (small batches): one BLAS call, which splits W instead of
packing all of it on every core. The backward's bias sum is
``minivit.kernels.reductions.sum_rows``.
"""

from __future__ import annotations

from functools import partial

from minivit import backend
from minivit.parallel.threads import parallel_rows


def linear_forward_kernel(x_rows, y_rows, weight, bias):
    """Rows (R, in) -> (R, out): y = x W^T + b, into ``y_rows``."""
    backend.xp.matmul(x_rows, weight.T, out=y_rows)
    if bias is not None:
        y_rows += bias


def forward(x_rows, weight, bias):
    """Replaces ``x_rows @ weight.T + bias``: (R, in) -> (R, out)."""
    xp = backend.xp
    y = xp.empty((x_rows.shape[0], weight.shape[0]), dtype=xp.result_type(x_rows, weight))
    kernel = partial(linear_forward_kernel, weight=weight, bias=bias)
    if x_rows.shape[0] >= weight.shape[0]:
        parallel_rows(kernel, x_rows, y, cache_blocks=False)
    else:
        kernel(x_rows, y)
    return y
