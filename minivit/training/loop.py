"""The training loop: epochs of mini-batch steps, evaluation, checkpoints.

One training step, in the order :meth:`Trainer.train_epoch` runs it::

    lr = schedule(global_step)          # WarmupCosine, set before every step
    lo, hi = ranks.rows(b)              # my rows of the batch (all of them in one process)
    zero_grad()
    logits = model.forward(xb[lo:hi])   # model.train(): dropout active
    loss, dlogits = cross_entropy(logits, yb[lo:hi], label_smoothing)
    model.backward(dlogits, input_grad=False)   # parameters only: no image gradient
    loss = ranks.combine(loss, ...)     # the whole batch's gradient and loss
    clip_grad_norm_(params, clip)       # optional
    optimizer.step()

After each epoch (:meth:`Trainer.fit`): evaluate, write ``last.npz`` (and
``best.npz`` on a new best), then the report (:mod:`~minivit.training.report`).
Everything random in an epoch derives from ``(seed, epoch)`` and the learning
rate from the global step, so a resumed run (:mod:`~minivit.training.resume`)
does the arithmetic of one that never stopped. Data stay on the host; each
batch crosses to the backend with :func:`minivit.backend.to_device`.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Sequence

import numpy as np

from minivit import backend
from minivit.config import TrainConfig
from minivit.data import iterate_batches
from minivit.data.augment import random_transforms, warp_affine
from minivit.loss import cross_entropy
from minivit.metrics import Evaluation
from minivit.optim import WarmupCosine, clip_grad_norm_
from minivit.parallel import distributed
from minivit.parallel.replicas import Replicas
from minivit.training import ranks as per_rank
from minivit.training import resume as checkpoints
from minivit.training.divergence import NonFiniteLossError, diverged_message
from minivit.training.inputs import check_data, statistic
from minivit.training.optimizer import make_optimizer
from minivit.training.report import RunReport

__all__ = ["Trainer"]


class Trainer:
    """Trains a model epoch by epoch, evaluates, logs, checkpoints and plots.

    Example::

        model = ViT(dim=64, depth=6, seed=0)
        trainer = Trainer(model, (x_train, y_train), (x_test, y_test),
                          TrainConfig(epochs=10), out_dir="runs/mnist",
                          dataset="mnist", mean=MNIST_MEAN, std=MNIST_STD)
        history = trainer.fit()           # or trainer.resume(); trainer.fit()

    Args:
        model: a :class:`~minivit.vit.ViT` (anything with forward/backward,
            named_parameters, train/eval, state_dict and a ``config`` dict).
        train_data, test_data: ``(x, y)`` host NumPy arrays; x float
            (N, C, H, W) already normalised, y integer labels (N,).
        config: a :class:`~minivit.config.TrainConfig`.
        out_dir: folder for checkpoints, metrics and plots (created).
        dataset: dataset name saved in the checkpoint config.
        mean, std: the normalisation used for x, one number or one per
            channel (saved; also gives the background augmentation fills in).
        class_names: names for the confusion matrix (default "0", "1", ...).
        quiet, stream, plots, tensorboard: what is shown and written
            (:class:`~minivit.training.report.RunReport`).
        world: a :class:`minivit.parallel.mpi.World` to train data-parallel on
            (default: this process alone); ranks other than 0 write nothing.
        bucket_bytes: size of the flat gradient buffers reduced in one call.

    Attributes:
        epoch: number of finished epochs; ``history`` one dict per epoch
            (keys :data:`minivit.reporting.METRIC_KEYS`); ``best_acc`` and
            ``best_epoch``; ``last_eval`` the latest test :class:`Evaluation`.
    """

    def __init__(self, model, train_data, test_data, config: TrainConfig | None = None,
                 out_dir="runs/train", dataset: str = "mnist", mean=0.0, std=1.0,
                 class_names: Sequence[str] | None = None, quiet: bool = False,
                 plots: bool = True, stream=None, tensorboard=None, world=None,
                 bucket_bytes: int = distributed.DEFAULT_BUCKET_BYTES):
        self.model = model
        self.config = cfg = TrainConfig() if config is None else config
        self.world = distributed.SINGLE_PROCESS if world is None else world
        self.x_train, self.y_train = check_data(train_data, "train_data")
        self.x_test, self.y_test = check_data(test_data, "test_data")
        self.out_dir, self.dataset = os.fspath(out_dir), str(dataset)
        self.mean, self.std = statistic(mean), statistic(std)
        num_classes = int(getattr(model, "config", {}).get("num_classes", 10))
        self.class_names = ([str(c) for c in class_names] if class_names is not None
                            else [str(i) for i in range(num_classes)])
        self.report = RunReport(self.out_dir, cfg.epochs, len(self.x_train),
                                self.world.is_main, quiet, stream, plots, tensorboard)

        self.steps_per_epoch = -(-len(self.x_train) // cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warmup_steps = min(int(round(cfg.warmup_epochs * self.steps_per_epoch)),
                           self.total_steps)
        self.schedule = WarmupCosine(cfg.lr, warmup_steps, self.total_steps, cfg.min_lr)
        self.optimizer = make_optimizer(model, cfg)

        self.epoch, self.history = 0, []
        self.best_acc, self.best_epoch = -1.0, 0
        self.last_eval: Evaluation | None = None
        self._elapsed_before = 0.0   # seconds spent in earlier (resumed) sessions
        self.ranks = per_rank.for_world(self.world, model, self.checkpoint_config(),
                                        (self.x_train, self.y_train),
                                        (self.x_test, self.y_test), cfg.batch_size,
                                        bucket_bytes)
        # one replica of the model per core, each on a slice of every batch
        self.replicas = Replicas(model, processes=self.ranks.replica_processes)

    # -- what the report and the checkpoints need -----------------------------
    buckets = property(lambda self: self.ranks.buckets, doc="gradient buckets (MPI) or None")
    plots = property(lambda self: self.report.plots, doc="plots are drawn each epoch")
    tensorboard = property(lambda self: self.report.tensorboard, doc="a TensorBoardLog or None")
    last_path = property(lambda self: self.path("last.npz"), doc="the latest checkpoint")
    best_path = property(lambda self: self.path("best.npz"), doc="the best checkpoint")

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def checkpoint_config(self) -> dict:
        """The ``config`` saved in every checkpoint (:mod:`~minivit.training.resume`)."""
        return checkpoints.checkpoint_config(self)

    def save(self, path) -> str:
        """Write a checkpoint of the current state (atomic; rank 0 only)."""
        return checkpoints.save(self, path)

    def resume(self, path=None) -> int:
        """Restore model, optimizer, epoch counter, history and best accuracy
        from a checkpoint (default ``<out_dir>/last.npz``); returns the number
        of finished epochs. A different model is an error; different training
        settings are warned about (the run then differs from an uninterrupted one)."""
        done = checkpoints.resume(self, self.last_path if path is None else os.fspath(path))
        self._elapsed_before = float(self.history[-1]["elapsed_s"]) if self.history else 0.0
        self.report.start_run(self.history)
        return done

    def make_plots(self) -> None:
        """(Re)draw curves.png and confusion_matrix.png."""
        self.report.make_plots(self)

    # -- the loop -------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train from epoch ``self.epoch + 1`` to ``config.epochs`` (or until
        ``stop_after`` epochs are done; the schedule still spans
        ``config.epochs`` and ``resume()`` continues exactly there).
        Returns the history. Raises :class:`NonFiniteLossError` when the loss
        becomes inf/NaN; nothing of that epoch is saved."""
        self.report.start_run(self.history)
        end = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        session_start = time.perf_counter()
        try:
            for epoch in range(self.epoch + 1, end + 1):
                epoch_start, comm_start = time.perf_counter(), self.world.comm_seconds
                train_loss, train_acc, train_time = self.train_epoch(epoch)
                result = self.evaluate()
                if not math.isfinite(result.loss):
                    # weights went non-finite in the last step(s): do not save them
                    raise NonFiniteLossError(diverged_message(
                        self, f"the test loss is {result.loss}", epoch, None))
                backend.synchronize()
                now = time.perf_counter()
                record = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "test_loss": result.loss,
                    "test_acc": result.accuracy,
                    "lr": self.schedule.lr_at(epoch * self.steps_per_epoch - 1),
                    "epoch_time_s": now - epoch_start,
                    "images_per_s": len(self.x_train) / train_time,
                    "elapsed_s": self._elapsed_before + (now - session_start),
                    "comm_time_s": self.world.comm_seconds - comm_start,
                }
                self.epoch, self.last_eval = epoch, result
                self.history.append(record)
                improved = result.accuracy > self.best_acc
                if improved:
                    self.best_acc, self.best_epoch = result.accuracy, epoch
                # checkpoint first, then the log: a crash in between is repaired
                # by resume(), which rewrites metrics.jsonl from the checkpoint
                self.save(self.last_path)
                if improved:
                    self.save(self.best_path)
                self.report.end_epoch(self, record, improved)
        finally:
            self.report.close()
        return self.history

    def train_epoch(self, epoch: int):
        """One pass over the training set. Returns (mean loss, accuracy, seconds)."""
        cfg = self.config
        # the same shuffle and augmentation on every rank; dropout masks differ
        backend.seed(per_rank.dropout_seed(cfg.seed * 1000 + epoch, self.world.rank))
        rng = np.random.default_rng([cfg.seed, epoch])
        background = -np.asarray(self.mean) / np.asarray(self.std)   # normalised 0
        self.model.train()
        params = self.model.parameters()
        n_seen, loss_sum, correct = 0, 0.0, 0
        self.report.progress.start_epoch(epoch)
        start = time.perf_counter()
        batches = iterate_batches(self.x_train, self.y_train, cfg.batch_size,
                                  shuffle=True, rng=rng)
        for i, (xb, yb) in enumerate(batches):
            step = (epoch - 1) * self.steps_per_epoch + i     # global 0-based step
            lr = self.schedule.apply(self.optimizer, step)
            b = len(xb)
            lo, hi = self.ranks.rows(b)
            transforms = (random_transforms(b, rng, cfg.max_shift, cfg.max_rotate)
                          if cfg.augment else None)          # drawn for the whole batch
            xb_mine = (xb[lo:hi] if transforms is None else
                       warp_affine(xb[lo:hi], *(t[lo:hi] for t in transforms), background))
            self.optimizer.zero_grad()
            loss, hits = self._forward_backward(xb_mine, yb[lo:hi])
            loss, hits = self.ranks.combine(loss, hits, lo, hi, b)
            if not math.isfinite(loss):
                raise NonFiniteLossError(diverged_message(
                    self, f"the training loss is {loss}", epoch, i, lr))
            norm = None
            if cfg.clip_grad is not None:
                norm = clip_grad_norm_(params, cfg.clip_grad)
                if not math.isfinite(norm):
                    raise NonFiniteLossError(diverged_message(
                        self, f"the gradient norm is {norm}", epoch, i, lr))
            self.optimizer.step()

            n_seen, loss_sum, correct = n_seen + b, loss_sum + loss * b, correct + hits
            self.report.step(step, b, loss_sum / n_seen, correct / n_seen,
                             {"train/loss": loss, "train/lr": lr, "train/grad_norm": norm})
        backend.synchronize()
        return loss_sum / n_seen, correct / n_seen, time.perf_counter() - start

    def _forward_backward(self, xb_host, yb_host):
        """Loss (mean over these images) and number classified right; the
        gradients are added into the parameters' ``.grad``. A rank with no
        rows of a (last, small) batch contributes nothing."""
        if len(xb_host) == 0:
            return 0.0, 0
        xb, yb = backend.to_device(xb_host), backend.to_device(yb_host)
        smoothing = self.config.label_smoothing
        loss, logits = self.replicas.loss_and_grads(     # a partial: it pickles
            xb, yb, functools.partial(cross_entropy, label_smoothing=smoothing))
        return loss, int((logits.argmax(axis=1) == yb).sum())    # one scalar to host

    def evaluate(self) -> Evaluation:
        """Evaluate the current model on the test set (split over the ranks)."""
        return self.ranks.evaluate(self.model, self.x_test, self.y_test,
                                   self.config.eval_batch_size, self.config.label_smoothing,
                                   self.replicas.logits)

