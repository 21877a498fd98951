"""The AdamW update in one pass over each parameter, where numba runs.

Replaces ``minivit.optim.adamw.adamw_kernel`` (the NumPy lines of
``AdamW._update``, ``minivit/optim/adamw.py``) for NumPy float32/float64
parameters whose p, g, m, v are all C-contiguous; the kernel itself is
``minivit/kernels/fused/adamw.py``. Elsewhere the NumPy kernel runs.
"""

from __future__ import annotations

from minivit import backend
from minivit.kernels.switch import fused_for, mode


def applies(p, g, m, v) -> bool:
    """True when :func:`update` runs on these arrays."""
    return fused_for(p, g, m, v) and all(a.flags.c_contiguous for a in (p, g, m, v))


def update(p, g, m, v, **hyper):
    """Replaces ``adamw_kernel(p, g, m, v, **hyper)``: p, m, v in place."""
    from minivit.kernels.fused import adamw as fused_adamw
    fused_adamw.update(p, g, m, v, **hyper)


def update_many(arrays_per_param, memo, **hyper) -> bool:
    """Replaces ``adamw_kernel`` on each (p, g, m, v) of ``arrays_per_param``
    (one dtype, the same ``hyper``) in one compiled call, where every one
    passes :func:`applies`; returns False, having done nothing, where one
    does not. ``memo`` is a dict the caller keeps for these parameters: the
    same arrays, under the same kernels, are checked once, not every step."""
    key = (mode(), backend.name, tuple(id(a) for arrays in arrays_per_param for a in arrays))
    if memo.get("checked") != key:
        if not all(applies(*arrays) for arrays in arrays_per_param):
            return False
        memo.clear()                                         # the fused call's lists too
        memo.update(checked=key, arrays=arrays_per_param)    # holds them: ids stay theirs
    from minivit.kernels.fused import adamw as fused_adamw
    fused_adamw.update_many(arrays_per_param, memo, **hyper)
    return True
