"""Training a model: the loop, and the rooms around it.

==================  ==========================================================
file                what it holds
==================  ==========================================================
loop.py             ``Trainer``: ``fit`` (epochs), ``train_epoch`` (steps),
                    ``evaluate``; reads in one sitting
ranks.py            the per-rank work: my rows of a batch, the whole batch's
                    gradient, loss and evaluation (one process or MPI ranks)
resume.py           what a checkpoint holds; resuming the same run exactly
report.py           progress, ``metrics.jsonl``, plots, TensorBoard
optimizer.py        AdamW/SGD over timm's weight-decay groups; head vs backbone
divergence.py       ``NonFiniteLossError`` and what to change when it happens
inputs.py           the data and normalisation a run is given, checked
==================  ==========================================================

Hyperparameters and named recipes: :mod:`minivit.config`; measuring:
:mod:`minivit.metrics`; the command line: :mod:`minivit.cli`.
"""

from minivit.training.divergence import NonFiniteLossError
from minivit.training.loop import Trainer
from minivit.training.optimizer import make_optimizer, split_head_groups

__all__ = ["Trainer", "NonFiniteLossError", "make_optimizer", "split_head_groups"]
