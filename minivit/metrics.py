"""Measuring a model: accuracy and loss on a dataset, the confusion matrix.

Forward passes only (eval mode, no backward); inputs cross to the active
backend batch by batch and only host arrays and Python floats come back.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from minivit import backend
from minivit.loss import cross_entropy
from minivit.module import no_grad

__all__ = ["Evaluation", "evaluate", "confusion_matrix"]


@dataclasses.dataclass
class Evaluation:
    """Result of :func:`evaluate`: accuracy in [0, 1], mean loss, and the
    predicted class of every image (host int64 array, for a confusion matrix)."""

    accuracy: float
    loss: float
    predictions: np.ndarray


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500,
             label_smoothing: float = 0.0, forward=None) -> Evaluation:
    """Accuracy, mean loss and predictions of ``model`` on ``(x, y)``.

    Runs in eval mode (dropout off), forward only, in batches; the model's
    previous train/eval mode is restored afterwards.

    Args:
        x: host float images (N, C, H, W), already normalised.
        y: host integer labels (N,).
        forward: what computes a batch's logits, ``model.forward`` unless
            given (the trainer passes its ``Replicas.logits``).
    """
    n = len(x)
    if n == 0:
        raise ValueError("evaluate needs at least one image")
    forward = model.forward if forward is None else forward
    was_training = model.training
    model.eval()
    try:
        total_loss, preds = 0.0, []
        with no_grad():
            for start in range(0, n, batch_size):
                xb = backend.to_device(x[start:start + batch_size])
                yb = backend.to_device(y[start:start + batch_size])
                logits = forward(xb)
                loss, _ = cross_entropy(logits, yb, label_smoothing)
                total_loss += loss * len(xb)           # batch mean -> sum
                preds.append(backend.to_numpy(logits.argmax(axis=1)))
    finally:
        model.train(was_training)
    predictions = np.concatenate(preds).astype(np.int64)
    accuracy = float((predictions == np.asarray(y)).mean())
    return Evaluation(accuracy=accuracy, loss=total_loss / n, predictions=predictions)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, predicted]`` as an int64 (K, K) array."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm
