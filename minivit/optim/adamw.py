"""Adam with decoupled weight decay, as torch."""

from __future__ import annotations

from functools import partial

from minivit import backend, kernels
from minivit.parallel import threads
from minivit.optim.base import Optimizer

__all__ = ["AdamW"]


class AdamW(Optimizer):
    """Adam with decoupled weight decay, exactly ``torch.optim.AdamW``.

    For each parameter p with gradient g, at step t = 1, 2, ... (m, v start
    at zero, have p's shape and dtype)::

        p = p * (1 - lr * weight_decay)       # decoupled decay, not in g
        m = beta1 * m + (1 - beta1) * g       # 1st moment
        v = beta2 * v + (1 - beta2) * g**2    # 2nd moment
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps   # eps after correction
        p = p - lr / (1 - beta1**t) * m / denom
    """

    _state_keys = ("step", "exp_avg", "exp_avg_sq")
    _counters = ("step",)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def _check(self, group):
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        betas = tuple(group["betas"])
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr} (must be >= 0)")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps} (must be >= 0)")
        if not wd >= 0.0:
            raise ValueError(f"invalid weight_decay {wd} (must be >= 0)")
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas} (two values in [0, 1))")

    def _hyper(self, p, state, group):
        """Start p's state on its first step, count the step, and return the
        update's scalars (its step's bias corrections included)."""
        return self._scalars(group, self._count_step(p, state))

    @staticmethod
    def _count_step(p, state):
        """Start p's state on its first step (m, v zero) and count the step: t."""
        if not state:
            xp = backend.xp
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p)
            state["exp_avg_sq"] = xp.zeros_like(p)
        state["step"] += 1
        return state["step"]

    @staticmethod
    def _scalars(group, t):
        """The scalars of an update at step t, the same for every parameter of
        the group at that step."""
        beta1, beta2 = (float(b) for b in group["betas"])
        # bias corrections undo the zero start of m and v
        return dict(lr=float(group["lr"]), eps=float(group["eps"]),
                    wd=float(group["weight_decay"]), beta1=beta1, beta2=beta2,
                    bias_correction1=1.0 - beta1 ** t, bias_correction2=1.0 - beta2 ** t)

    def _update(self, p, g, state, group):
        hyper = self._hyper(p, state, group)
        self._apply((p, g, state["exp_avg"], state["exp_avg_sq"]), hyper)

    @staticmethod
    def _apply(arrays, hyper):
        """One parameter's update: arrays (p, g, m, v)."""
        p = arrays[0]
        if kernels.adamw.applies(*arrays):   # the same function, faster: minivit/kernels/adamw.py
            kernels.adamw.update(*arrays, **hyper)
        elif p.size >= threads.PARALLEL_MIN_ELEMENTS and all(a.flags.c_contiguous for a in arrays):
            # elementwise: flat views, run in cache-sized blocks on every core
            threads.parallel_rows(partial(adamw_kernel, **hyper), *(a.reshape(-1) for a in arrays))
        else:
            adamw_kernel(*arrays, **hyper)

    def _update_group(self, items, group):
        """All of a group's updates. Parameters of one dtype at the same step
        (normally all) share their scalars; where the fused kernel runs on
        every one of them, they go in one compiled call instead of one each:
        the same arithmetic per element."""
        together = {}
        for p, g, state in items:
            t = self._count_step(p, state)
            together.setdefault((p.dtype.str, t), []).append(
                (p, g, state["exp_avg"], state["exp_avg_sq"]))
        memos = self.__dict__.setdefault("_fused_memos", {})
        for (dtype, t), arrays_per_param in together.items():
            hyper = self._scalars(group, t)
            memo = memos.setdefault((id(group), dtype), {})
            if not kernels.adamw.update_many(arrays_per_param, memo, **hyper):
                for arrays in arrays_per_param:
                    self._apply(arrays, hyper)


def adamw_kernel(p, g, m, v, lr, eps, wd, beta1, beta2, bias_correction1, bias_correction2):
    """One AdamW update of p, m, v in place, elementwise (any block of them)."""
    xp = backend.xp
    # p = p * (1 - lr * wd)   decoupled: decay does not pass through m, v
    if wd != 0.0:
        p *= 1.0 - lr * wd
    tmp = xp.multiply(g, 1.0 - beta1)  # the one scratch array, reused below
    # m = beta1 * m + (1 - beta1) * g
    m *= beta1
    m += tmp
    # v = beta2 * v + (1 - beta2) * g * g
    xp.square(g, out=tmp)
    tmp *= 1.0 - beta2
    v *= beta2
    v += tmp
    # denom = sqrt(v) / sqrt(bc2) + eps
    xp.sqrt(v, out=tmp)
    tmp /= bias_correction2 ** 0.5
    tmp += eps
    # p = p - (lr / bc1) * m / denom
    xp.divide(m, tmp, out=tmp)
    tmp *= lr / bias_correction1
    p -= tmp
