"""The softmax cross-entropy, loss and dlogits in one pass per row, where numba runs.

Replaces the lines of ``minivit.loss.cross_entropy`` after its checks of the
arguments, for NumPy float32/float64 logits with labels in [0, K); the
kernel itself is ``minivit/kernels/fused/loss.py``. Elsewhere (no numba,
CuPy, other dtypes, ``MINIVIT_KERNELS=numpy`` or ``reference``) the plain
lines of ``minivit/loss.py`` run: NumPy has no faster arrangement of them
worth a kernel of its own.
"""

from __future__ import annotations

from minivit.kernels.switch import fused_for


def applies(logits, labels) -> bool:
    """True when :func:`cross_entropy` runs on these arguments (already
    checked by ``minivit.loss.cross_entropy``): the fused kernels are on for
    logits, and every label indexes a class (others keep the reference's
    own behaviour)."""
    if not fused_for(logits) or labels.size == 0:
        return False
    return 0 <= int(labels.min()) and int(labels.max()) < logits.shape[1]


def cross_entropy(logits, labels, label_smoothing):
    """Replaces ``minivit.loss.cross_entropy``'s lines after its checks: (loss, dlogits)."""
    from minivit.kernels.fused import loss as fused_loss
    return fused_loss.cross_entropy(logits, labels, label_smoothing)
