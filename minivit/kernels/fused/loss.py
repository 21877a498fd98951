"""Softmax cross-entropy: the loss and dL/dlogits in one compiled pass per row.

Replaces the lines of ``minivit.loss.cross_entropy`` (``minivit/loss.py``)
from ``shifted = logits - max`` to ``dlogits /= B``, in the same order of
operations per row: the row max, log(sum(exp(z - max))), log p, the row's
loss (with label smoothing e: (1 - e) nll + e mean(-log p)), and
dlogits = (p - q) / B. The mean over rows is NumPy's, as there.
"""

from __future__ import annotations

import math

import numpy
from numba import njit

_REDUCE = {"reassoc", "contract"}


@njit(cache=True, error_model="numpy", nogil=True, fastmath=_REDUCE)
def _rows(logits, labels, per_row, dlogits, keep, smooth, smooth_each, batch):
    B, K = logits.shape
    t = logits.dtype.type
    for i in range(B):
        top = logits[i, 0]
        for k in range(1, K):
            v = logits[i, k]
            if v > top or v != v:                    # NaN wins, as in numpy's max
                top = v
        total = t(0.0)
        for k in range(K):
            total += math.exp(logits[i, k] - top)
        lse = math.log(total)
        label = labels[i]
        mean_neg = t(0.0)
        for k in range(K):
            log_p = (logits[i, k] - top) - lse
            mean_neg -= log_p
            dlogits[i, k] = math.exp(log_p)                      # p
        nll = -((logits[i, label] - top) - lse)
        if smooth != t(0.0):
            per_row[i] = keep * nll + smooth * (mean_neg / t(K))
        else:
            per_row[i] = nll
        dlogits[i, label] -= keep                                # p - q (one-hot part)
        for k in range(K):
            if smooth != t(0.0):
                dlogits[i, k] -= smooth_each                     # p - q (uniform part)
            dlogits[i, k] /= batch


def cross_entropy(logits, labels, label_smoothing):
    """Replaces ``minivit.loss.cross_entropy``'s lines after its checks, for
    NumPy float logits (B, K) and labels in [0, K): (loss, dlogits)."""
    logits = numpy.ascontiguousarray(logits)
    labels = numpy.ascontiguousarray(labels, dtype=numpy.int64)
    B, K = logits.shape
    t = logits.dtype.type
    per_row = numpy.empty(B, dtype=logits.dtype)
    dlogits = numpy.empty_like(logits)
    e = float(label_smoothing)
    _rows(logits, labels, per_row, dlogits, t(1.0 - e), t(e), t(e / K), t(B))
    return float(per_row.mean()), dlogits
