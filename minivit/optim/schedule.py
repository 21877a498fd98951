"""The learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math
import operator

from minivit.optim.base import Optimizer

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """Linear warm-up, then cosine decay: the learning rate of step ``s``.

    With W = warmup_steps, T = total_steps and 0-based optimizer steps s::

        s <  W:      lr = base_lr * (s + 1) / W
        W <= s < T:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2
        s >= T:      lr = min_lr

    So the first step uses base_lr / W (small but not zero), step W - 1 and
    step W use base_lr, and the cosine reaches min_lr at s = T (one past the
    last step of a T-step run, whose last update is therefore not wasted at
    lr = 0).
    """

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int,
                 min_lr: float = 0.0):
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps = operator.index(warmup_steps)
        self.total_steps = operator.index(total_steps)
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                             f"got {warmup_steps}")
        if not self.base_lr >= 0.0:
            raise ValueError(f"base_lr must be >= 0, got {base_lr}")
        if not 0.0 <= self.min_lr <= self.base_lr:
            raise ValueError(f"min_lr must be in [0, base_lr={base_lr}], got {min_lr}")

    def lr_at(self, step: int) -> float:
        """The learning rate for 0-based optimizer step ``step``."""
        s = operator.index(step)
        if s < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        w, t = self.warmup_steps, self.total_steps
        if s < w:
            return self.base_lr * (s + 1) / w
        if s >= t:
            return self.min_lr
        progress = (s - w) / (t - w)  # in [0, 1)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    __call__ = lr_at

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set the optimizer's lr for ``step`` (times each group's
        ``lr_scale``, if any) and return it."""
        lr = self.lr_at(step)
        optimizer.set_lr(lr)
        return lr

    def __repr__(self) -> str:
        return (f"WarmupCosine(base_lr={self.base_lr}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps}, min_lr={self.min_lr})")
