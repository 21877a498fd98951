"""Gradient clipping by the global L2 norm, as torch."""

from __future__ import annotations

import math

from minivit import backend
from minivit.optim.params import _iter_params

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(params, max_norm: float, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so their global L2 norm is <= max_norm.

    total = sqrt(sum over params of sum(g**2)); if total > max_norm every
    gradient is multiplied by max_norm / (total + 1e-6) (torch's formula).

    Args:
        params: Parameters, (name, Parameter) pairs, or a Module; those
            without a gradient are ignored.
    Returns:
        The norm before clipping, as a Python float. A non-finite norm (inf or
        NaN gradients) leaves the gradients alone (skip that step), or raises
        with ``error_if_nonfinite=True``.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in _iter_params(params) if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.xp
    # per-tensor norms stay on the device; one transfer for the total
    norms = xp.stack([xp.linalg.norm(g.reshape(-1)) for g in grads])
    total = float(xp.linalg.norm(norms))
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"the total gradient norm is {total}; gradients "
                               "contain inf/NaN (lower the lr or check the loss)")
        return total
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total
