"""Softmax cross-entropy: the loss and dL/dlogits in one call.

Forward (per row, K classes, target distribution q)    Backward
  log p = z - max(z) - log(sum(exp(z - max(z))))          dL/dz = (p - q) / B
  L = -(1/B) sum_rows sum_k q_k log p_k
With label smoothing e: q = (1 - e) * onehot(y) + e / K (PyTorch's definition).
Subtracting the row max before exp() keeps logits in the thousands finite.
"""

from __future__ import annotations

from minivit import backend, kernels


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy over the batch.

    Args:
        logits: (B, K) float array.
        labels: (B,) integer class indices in [0, K).
        label_smoothing: e in [0, 1).
    Returns:
        (loss, dlogits): loss as a Python float, dlogits (B, K) = dL/dlogits.
    """
    xp = backend.xp
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits (B, K), got shape {tuple(logits.shape)}")
    B, K = logits.shape
    labels = xp.asarray(labels)
    if labels.shape != (B,):
        raise ValueError(f"cross_entropy expects labels ({B},), got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if kernels.loss.applies(logits, labels):   # the same function, faster: minivit/kernels/loss.py
        return kernels.loss.cross_entropy(logits, labels, label_smoothing)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))   # (B, K)
    rows = xp.arange(B)
    nll = -log_probs[rows, labels]                                   # (B,)
    if label_smoothing:
        smooth = -log_probs.mean(axis=1)                             # uniform target part
        per_row = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    else:
        per_row = nll
    loss = float(per_row.mean())
    dlogits = xp.exp(log_probs)                                      # p
    dlogits[rows, labels] -= 1.0 - label_smoothing                   # p - q (one-hot part)
    if label_smoothing:
        dlogits -= label_smoothing / K                               # p - q (uniform part)
    dlogits /= B
    return loss, dlogits


class CrossEntropyLoss:
    """Object form: ``forward(logits, labels) -> loss`` and ``backward() -> dlogits``."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing
        self._dlogits = None

    def forward(self, logits, labels):
        loss, self._dlogits = cross_entropy(logits, labels, self.label_smoothing)
        return loss

    __call__ = forward

    def backward(self):
        if self._dlogits is None:
            raise RuntimeError("CrossEntropyLoss.backward() was called before forward()")
        return self._dlogits
