"""Exercise 7: the backward pass of softmax cross-entropy.

    python -m minivit.exercises check cross_entropy            (grades this file)
    python -m minivit.exercises check cross_entropy --hint 2   (more help when it fails)

``forward`` is given: the mean over the batch of -log p[label], with optional
label smoothing. Write ``backward(dloss, cache)``: ``dloss`` is dL/dloss (a
number: 1.0 when the loss is L itself); return dL/dlogits, shape (B, K);
change no input in place.

The checker uses several batch sizes, label smoothing 0 and 0.1, a dloss
other than 1, and compares with finite differences in float64.
The derivation: docs/layers/cross_entropy.md.
"""

import numpy as np


def forward(logits, labels, label_smoothing=0.0):
    """logits (B, K), labels (B,) integers -> loss (a float), cache."""
    B, K = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))   # (B, K)
    q = np.full((B, K), label_smoothing / K)                 # the target distribution
    q[np.arange(B), labels] += 1.0 - label_smoothing
    loss = float(-(q * log_p).sum() / B)
    cache = (np.exp(log_p), q)
    return loss, cache


def backward(dloss, cache):
    """Fill in the right-hand column, then write the code.

    Forward (per row, K classes)              Backward (given dloss)
      log p = z - log(sum(exp(z)))              dL/dz = ?      (B, K)
      loss  = -(1/B) sum_rows sum_k q_k log p_k
    """
    p, q = cache
    raise NotImplementedError("write the backward of cross-entropy (the table above)")
