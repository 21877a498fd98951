"""When training diverges: the error, and a message that says what to change.

The loop checks the loss after every step (and the gradient norm when it
clips) and the test loss after every epoch; nothing of a failed epoch is
saved, so ``last.npz`` still holds the last good one.
"""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "diverged_message"]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became inf/NaN: training diverged."""

    # Loss and gradients are summed over the ranks before they are checked,
    # so every rank raises this together (no rank is left waiting).
    all_ranks = True


def diverged_message(trainer, what: str, epoch: int, step: int | None,
                     lr: float | None = None) -> str:
    """Where it happened, what to change, and which checkpoint is kept."""
    config = trainer.config
    where = (f"epoch {epoch}, step {step + 1}/{trainer.steps_per_epoch}"
             if step is not None else f"the end of epoch {epoch}")
    lr_now = config.lr if lr is None else lr
    kept = (f"{trainer.last_path} (epoch {trainer.epoch}) is left unchanged"
            if trainer.epoch > 0 else "no checkpoint was written")
    clip = "" if config.clip_grad else ", or enable gradient clipping (--clip-grad 1.0)"
    return (f"training diverged: {what} at {where} (lr {lr_now:.3g}). "
            f"Lower the learning rate (e.g. --lr {config.lr / 3:.2g}){clip}. "
            f"Stopped without saving: {kept}.")
