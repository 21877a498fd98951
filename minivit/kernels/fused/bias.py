"""A Linear layer's bias added to every row of its product, in one compiled loop.

Replaces ``y_rows += bias`` in ``minivit.kernels.linear.linear_forward_kernel``
(the ``+ b`` of the reference line y = x W^T + b in
``minivit/layers/linear.py``). NumPy's broadcast add walks the rows as an
outer loop of short inner loops, each set up anew; this loop runs over the
rows' values in place, one addition per value: the same rounding, so the same
result bit for bit. It runs inside the Linear kernel's shares of rows (one
per core for large products), so it is serial and releases the GIL. No
backward here: that of + b is the Linear layer's own, db = the sum of dy
over the rows (``minivit.kernels.reductions.sum_rows``), dy passing through.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, error_model="numpy", nogil=True)
def _add_rows(y, bias):
    R, C = y.shape
    for i in range(R):
        for j in range(C):
            y[i, j] += bias[j]


def add_to_rows(y_rows, bias):
    """Replaces ``y_rows += bias``: y_rows (R, C) C-contiguous, bias (C,) of
    the same dtype, in place."""
    _add_rows(y_rows, bias)
