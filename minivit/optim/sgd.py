"""Stochastic gradient descent with momentum and Nesterov, as torch."""

from __future__ import annotations

from minivit import backend
from minivit.optim.base import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, exactly ``torch.optim.SGD`` (dampening 0).

    For each parameter p with gradient g (any shape; state has p's shape)::

        d = g + weight_decay * p              # L2 decay, through the gradient
        b = d            (first step)         # momentum buffer
        b = momentum * b + d   (later steps)
        d = d + momentum * b   if nesterov else  b
        p = p - lr * d
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _check(self, group):
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr} (must be >= 0)")
        if not mu >= 0.0:
            raise ValueError(f"invalid momentum {mu} (must be >= 0)")
        if not wd >= 0.0:
            raise ValueError(f"invalid weight_decay {wd} (must be >= 0)")
        if group["nesterov"] and mu <= 0.0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _update(self, p, g, state, group):
        xp = backend.xp
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        owned = False  # does d hold a temporary we may overwrite?
        d = g
        if wd != 0.0:
            # d = g + wd * p
            d = xp.multiply(p, wd)
            d += g
            owned = True
        if mu != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # b_1 = d_1 (torch starts the buffer at the first gradient)
                buf = state["momentum_buffer"] = d.copy()
            else:
                # b_t = mu * b_{t-1} + d_t
                buf *= mu
                buf += d
            if group["nesterov"]:
                # d_t = d_t + mu * b_t   (look ahead along the velocity)
                ahead = xp.multiply(buf, mu)
                ahead += d
                d, owned = ahead, True
            else:
                d, owned = buf, False
        # p = p - lr * d
        if owned:
            d *= lr
            p -= d
        else:
            p -= xp.multiply(d, lr)
