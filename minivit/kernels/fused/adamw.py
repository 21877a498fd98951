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

import numpy
from numba import njit

from minivit.kernels import fused
from minivit.parallel import threads


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


@njit(cache=True, error_model="numpy", nogil=True)
def _serial_many(ps, gs, ms, vs, offsets, lo, hi, decay, b1, one_minus_b1, b2, one_minus_b2,
                 sqrt_bc2, eps, step, decayed):
    """``_serial`` on elements lo..hi-1 of the parameters laid end to end
    (parameter a holds elements offsets[a] .. offsets[a + 1] - 1)."""
    for a in range(len(ps)):
        start = max(lo, offsets[a]) - offsets[a]
        stop = min(hi, offsets[a + 1]) - offsets[a]
        if start < stop:        # a call of its own: a loop over arrays it was given vectorises
            _serial(ps[a][start:stop], gs[a][start:stop], ms[a][start:stop], vs[a][start:stop],
                    decay, b1, one_minus_b1, b2, one_minus_b2, sqrt_bc2, eps, step, decayed)


def _as_lists(arrays_per_param, memo):
    """numba typed lists of the flat p, g, m, v and the parameters' offsets,
    built once and kept in ``memo`` (the caller's dict, which it empties when
    the arrays change and which holds them alive meanwhile)."""
    from numba import typed
    if "lists" not in memo:
        flat = [[a.reshape(-1) for a in column] for column in zip(*arrays_per_param)]
        sizes = [p.size for p in flat[0]]
        memo.update(lists=[typed.List(column) for column in flat],
                    offsets=numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64))
    return memo["lists"], memo["offsets"]


def update_many(arrays_per_param, memo, lr, eps, wd, beta1, beta2, bias_correction1,
                bias_correction2):
    """``update`` on every (p, g, m, v) of ``arrays_per_param`` (all
    C-contiguous, one float dtype, one set of hyperparameters) in one
    compiled call, its elements shared out over the cores when many.
    ``memo``: a dict the caller keeps for this set of parameters and
    empties when any of their arrays is replaced."""
    lists, offsets = _as_lists(arrays_per_param, memo)
    t = arrays_per_param[0][0].dtype.type
    scalars = (t(1.0 - lr * wd), t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2),
               t(bias_correction2 ** 0.5), t(eps), t(lr / bias_correction1), wd != 0.0)
    total = int(offsets[-1])

    def run_share(lo, hi):
        _serial_many(*lists, offsets, lo, hi, *scalars)

    if total < threads.PARALLEL_MIN_ELEMENTS:
        run_share(0, total)
    else:
        threads.parallel_shares(run_share, total)
