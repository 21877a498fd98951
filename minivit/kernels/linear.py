"""y = x W^T + b with one share of the work per core, in minivit's threads.

Replaces ``Linear.forward``'s reference lines (``minivit/layers/linear.py``)
and ``PatchEmbed``'s projection. Every share is one single-threaded BLAS call
in minivit's threads, never BLAS's own: its worker threads keep spinning
after a call, taking a core from the next layer's kernels. Many rows: one
share of the rows per core. Few rows (small batches, the class token alone):
one share of W's rows (the output features) per core, so that no core packs
all of W. The backward's bias sum is ``minivit.kernels.reductions.sum_rows``.
"""

from __future__ import annotations

from functools import partial

from minivit import backend
from minivit.parallel import threads


def linear_forward_kernel(x_rows, y_rows, weight, bias):
    """Rows (R, in) -> (R, out): y = x W^T + b, into ``y_rows``."""
    backend.xp.matmul(x_rows, weight.T, out=y_rows)
    if bias is not None:
        y_rows += bias


def forward(x_rows, weight, bias):
    """Replaces ``x_rows @ weight.T + bias``: (R, in) -> (R, out)."""
    xp = backend.xp
    y = xp.empty((x_rows.shape[0], weight.shape[0]), dtype=xp.result_type(x_rows, weight))
    rows, (features, inputs) = x_rows.shape[0], weight.shape
    kernel = partial(linear_forward_kernel, weight=weight, bias=bias)
    # A small product: one call here costs less than handing shares to threads.
    if backend.name != "numpy" or rows * features * inputs < threads.PARALLEL_MIN_ELEMENTS:
        kernel(x_rows, y)
    elif rows >= features:
        threads.parallel_shares(lambda lo, hi: kernel(x_rows[lo:hi], y[lo:hi]), rows)
    else:
        def feature_share(lo, hi):      # y[:, lo:hi] = x W[lo:hi]^T + b[lo:hi]
            linear_forward_kernel(x_rows, y[:, lo:hi], weight[lo:hi],
                                  None if bias is None else bias[lo:hi])
        threads.parallel_shares(feature_share, features)
    return y
