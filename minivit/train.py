"""The names users import from ``minivit.train``; the training code itself
lives in :mod:`minivit.training` (the loop in ``minivit/training/loop.py``).

``from minivit.train import Trainer, TrainConfig, evaluate`` keeps working:
the names below are the very objects of the modules that define them.
"""

from minivit.config import TrainConfig
from minivit.metrics import Evaluation, confusion_matrix, evaluate
from minivit.reporting import (
    METRIC_KEYS,
    format_duration,
    plot_confusion_matrix,
    plot_curves,
)
from minivit.training import NonFiniteLossError, Trainer, split_head_groups
from minivit.training.report import TENSORBOARD_IMAGES

__all__ = [
    "Trainer",
    "NonFiniteLossError",
    "TrainConfig",
    "Evaluation",
    "evaluate",
    "confusion_matrix",
    "plot_curves",
    "plot_confusion_matrix",
    "format_duration",
    "METRIC_KEYS",
    "split_head_groups",
    "TENSORBOARD_IMAGES",
]
