"""Dropout's mask and product, from the same random numbers.

Replaces ``Dropout.forward``'s reference lines (``minivit/layers/dropout.py``):
keep = u >= p, mask = keep / (1 - p), y = x * mask. The uniform numbers u
are drawn exactly as there (``backend.device_rng().random(x.shape,
dtype=x.dtype)``), so a seed gives the same mask in every mode. With numba
(``minivit/kernels/fused/dropout.py``) the mask and y are written in one
pass over u and x, the mask into u's own buffer. The backward, dx = dy * mask,
is one product already: the layer's own line, with no kernel of its own.
"""

from __future__ import annotations

from minivit import backend
from minivit.kernels.switch import fused_for


def forward(x, p):
    """Replaces the reference lines of ``Dropout.forward`` in training: (y, mask)."""
    u = backend.device_rng().random(x.shape, dtype=x.dtype)
    if fused_for(x, u):
        from minivit.kernels.fused import dropout as fused_dropout
        return fused_dropout.forward(x, u, p)
    mask = (u >= p).astype(x.dtype) * (1.0 / (1.0 - p))
    return x * mask, mask
