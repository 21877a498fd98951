"""The AdamW update, one compiled pass over each parameter.

Replaces ``minivit.optim.adamw.adamw_kernel`` (``minivit/optim/adamw.py``):
per element, in the same order of operations and with the same scalars (in
the parameter's dtype, as NumPy casts them there), so the result is the
NumPy kernel's, which matches ``torch.optim.AdamW``::

    p = p * (1 - lr wd);  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
    p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

No contraction into fused multiply-adds, which would round differently.
"""

from __future__ import annotations

import math

from numba import njit

from minivit.kernels import fused


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _one(p, g, m, v, i, decay, b1, one_minus_b1, b2, one_minus_b2, sqrt_bc2, eps, step,
         decayed):
    if decayed:
        p[i] *= decay
    gi = g[i]
    m[i] = m[i] * b1 + gi * one_minus_b1
    v[i] = v[i] * b2 + (gi * gi) * one_minus_b2
    denom = math.sqrt(v[i]) / sqrt_bc2 + eps
    p[i] -= (m[i] / denom) * step


@njit(cache=True, error_model="numpy", nogil=True)
def _serial(p, g, m, v, decay, b1, one_minus_b1, b2, one_minus_b2, sqrt_bc2, eps, step,
            decayed):
    for i in range(p.shape[0]):
        _one(p, g, m, v, i, decay, b1, one_minus_b1, b2, one_minus_b2, sqrt_bc2, eps, step,
             decayed)



def update(p, g, m, v, lr, eps, wd, beta1, beta2, bias_correction1, bias_correction2):
    """Replaces ``adamw_kernel``: p, m, v (C-contiguous, one float dtype) in place."""
    t = p.dtype.type
    flat = [a.reshape(-1) for a in (p, g, m, v)]
    fused.run(_serial, flat,
              (t(1.0 - lr * wd), t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2),
               t(bias_correction2 ** 0.5), t(eps), t(lr / bias_correction1), wd != 0.0))
