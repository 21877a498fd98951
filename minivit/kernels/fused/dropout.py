"""Dropout's mask and product in one compiled pass.

Replaces ``minivit.kernels.dropout.forward``'s NumPy lines (the reference
lines of ``Dropout.forward``): mask = (u >= p) / (1 - p) and y = x * mask,
per element, the mask written over u (drawn for this call alone). The
backward (dx = dy * mask) stays the layer's single product.
"""

from __future__ import annotations

import numpy
from numba import njit

from minivit.kernels import fused


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _one(x, u, y, p, scale, i):
    t = x.dtype.type
    m = scale if u[i] >= p else t(0.0)
    u[i] = m
    y[i] = x[i] * m


@njit(cache=True, error_model="numpy", nogil=True)
def _serial(x, u, y, p, scale):
    for i in range(x.shape[0]):
        _one(x, u, y, p, scale, i)



def forward(x, u, p):
    """Replaces ``mask = (u >= p) / (1 - p); y = x * mask``: (y, mask), the
    mask in u's buffer (u must be C-contiguous; x is copied if it is not)."""
    x = numpy.ascontiguousarray(x)
    y = numpy.empty_like(x)
    t = x.dtype.type
    fused.run(_serial, (x.reshape(-1), u.reshape(-1), y.reshape(-1)), (t(p), t(1.0 / (1.0 - p))))
    return y, u
