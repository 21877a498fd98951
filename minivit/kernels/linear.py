"""y = x W^T + b, each product on the cores in the way that suits its shape.

Replaces ``Linear.forward``'s reference lines (``minivit/layers/linear.py``)
and ``PatchEmbed``'s projection. BLAS's own threads keep spinning for a
while after each call, waiting for the next, and so take a core from
minivit's threads if those run next (``minivit.parallel.threads``). Hence:

- a large product with many rows: one share of the rows per core, each a
  single-threaded BLAS call in minivit's threads;
- a large product with few rows (small batches, the class token alone): one
  BLAS call, which splits W instead of packing all of it on every core;
- a small product with few rows: one BLAS call, on one BLAS thread if
  minivit's threads have just run (the layers around it are being shared
  out, and a second BLAS thread saves less than its spinning takes from
  them), else on BLAS's threads (a run of small products, as in a batch of
  one image);
- a small product with many rows (a small model's tokens): one BLAS call;
  shares or one BLAS thread measured slower there (docs/performance.md).

The backward's bias sum is ``minivit.kernels.reductions.sum_rows``; with the
fused kernels the forward's bias add is ``minivit/kernels/fused/bias.py``.
"""

from __future__ import annotations

from functools import partial

from minivit import backend
from minivit.kernels.switch import fused_for
from minivit.parallel import threads

# Multiply-adds (rows x in x out) from which a product counts as large.
LARGE_PRODUCT = 1 << 24


def linear_forward_kernel(x_rows, y_rows, weight, bias):
    """Rows (R, in) -> (R, out): y = x W^T + b, into ``y_rows``."""
    backend.xp.matmul(x_rows, weight.T, out=y_rows)
    if bias is None:
        return
    if fused_for(y_rows, bias) and y_rows.flags.c_contiguous:
        from minivit.kernels.fused import bias as fused_bias
        fused_bias.add_to_rows(y_rows, bias)       # minivit/kernels/fused/bias.py
    else:
        y_rows += bias


def forward(x_rows, weight, bias):
    """Replaces ``x_rows @ weight.T + bias``: (R, in) -> (R, out)."""
    xp = backend.xp
    y = xp.empty((x_rows.shape[0], weight.shape[0]), dtype=xp.result_type(x_rows, weight))
    kernel = partial(linear_forward_kernel, weight=weight, bias=bias)
    rows, features = x_rows.shape[0], weight.shape[0]
    macs = rows * weight.size
    if backend.name != "numpy":                  # the GPU: one call, the whole device
        kernel(x_rows, y)
    elif macs >= LARGE_PRODUCT and rows >= features:
        threads.parallel_shares(lambda lo, hi: kernel(x_rows[lo:hi], y[lo:hi]), rows)
    elif (rows < features and threads.PARALLEL_MIN_ELEMENTS <= macs < LARGE_PRODUCT
          and threads.ran_recently()):    # (BLAS keeps a tiny product on one thread itself)
        with threads.blas_threads(1):
            kernel(x_rows, y)
    else:
        kernel(x_rows, y)
    return y
