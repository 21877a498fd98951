"""The training loop: epochs of mini-batch steps, evaluation, checkpoints.

One training step, in the order :meth:`Trainer.train_epoch` runs it::

    lr = schedule(global_step)        # WarmupCosine, set before every step
    zero_grad()
    logits = model.forward(xb)        # model.train(): dropout active
    loss, dlogits = cross_entropy(logits, yb, label_smoothing)
    model.backward(dlogits)
    clip_grad_norm_(params, clip)     # optional
    optimizer.step()

After each epoch (:meth:`Trainer.fit`) the model is evaluated on the test
set, then ``last.npz`` (and ``best.npz`` on a new best) is written, then a
line of ``metrics.jsonl``, the plots, and the progress line. What is
reported and how lives in :mod:`minivit.reporting`; measuring in
:mod:`minivit.metrics`; hyper-parameters in :mod:`minivit.config`; the
command line in :mod:`minivit.cli`.

Reproducible resumption. Everything random in an epoch is derived from
``(seed, epoch)`` alone: the shuffle and the augmentation use a fresh
``np.random.default_rng([seed, epoch])`` and dropout masks come from
``backend.seed(seed * 1000 + epoch)``, called at the start of the epoch. The
learning rate is a function of the global step. So a run stopped after epoch
k and resumed from ``last.npz`` performs exactly the same arithmetic as a run
that never stopped, and (on the CPU) ends with bit-identical weights.

Data stay on the host as NumPy arrays; each batch crosses to the active
backend with :func:`minivit.backend.to_device`, and only Python scalars and
host arrays come back (for logging and saving), so the loop runs unchanged on
CuPy.

Data parallel (``mpirun -n N``, see :mod:`minivit.distributed`): every rank
runs this same loop on the same global batches, takes its own rows of each,
and between ``backward`` and the clipping the gradients are summed over the
ranks, each weighted by its share of the batch. Evaluation is split the same
way and its counts summed. Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
import warnings
from typing import Sequence

import numpy as np

from minivit import backend, distributed, viz
from minivit.checkpoint import load_checkpoint, save_checkpoint
from minivit.config import TrainConfig
from minivit.data import iterate_batches
from minivit.data.augment import random_transforms, warp_affine
from minivit.loss import cross_entropy
from minivit.metrics import Evaluation, confusion_matrix, evaluate
from minivit.module import no_grad
from minivit.optim import SGD, AdamW, WarmupCosine, clip_grad_norm_, param_groups_weight_decay
from minivit.replicas import Replicas
from minivit.reporting import (
    METRIC_KEYS,
    MetricsLog,
    Progress,
    TensorBoardLog,
    format_duration,
    plot_confusion_matrix,
    plot_curves,
)

__all__ = [
    "Trainer",
    "NonFiniteLossError",
    # defined beside the loop, importable from here as before
    "TrainConfig",
    "Evaluation",
    "evaluate",
    "confusion_matrix",
    "plot_curves",
    "plot_confusion_matrix",
    "format_duration",
    "METRIC_KEYS",
]

# Test images whose attention maps go to TensorBoard each epoch.
TENSORBOARD_IMAGES = 4


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became inf/NaN: training diverged."""

    # Loss and gradients are summed over the ranks before they are checked,
    # so every rank raises this together (no rank is left waiting).
    all_ranks = True


def _config_differences(saved: dict, current: dict) -> list[str]:
    """``["key: saved -> current", ...]`` for every key that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


class Trainer:
    """Trains a model epoch by epoch, evaluates, logs, checkpoints and plots.

    Example::

        model = ViT(dim=64, depth=6, seed=0)
        trainer = Trainer(model, (x_train, y_train), (x_test, y_test),
                          TrainConfig(epochs=10), out_dir="runs/mnist",
                          dataset="mnist", mean=MNIST_MEAN, std=MNIST_STD,
                          class_names=[str(d) for d in range(10)])
        history = trainer.fit()           # or trainer.resume(); trainer.fit()

    Args:
        model: a :class:`~minivit.vit.ViT` (anything with forward/backward,
            named_parameters, train/eval, state_dict and a ``config`` dict).
        train_data, test_data: ``(x, y)`` host NumPy arrays; x float
            (N, C, H, W) already normalised, y integer labels (N,).
        config: a :class:`TrainConfig`.
        out_dir: folder for checkpoints, metrics and plots (created).
        dataset: dataset name saved in the checkpoint config.
        mean, std: the normalisation used for x, one number or one per
            channel (saved, so that prediction tools normalise new images the
            same way; also gives the background value augmentation fills in).
        class_names: names for the confusion matrix (default "0", "1", ...).
        quiet: print nothing. Otherwise a live progress bar on a terminal,
            and one summary line per epoch.
        plots: write curves.png and confusion_matrix.png each epoch.
        stream: where progress goes (default sys.stdout).
        tensorboard: a folder for TensorBoard event files (needs tensorboardX),
            or None.
        world: a :class:`minivit.distributed.World` to train data-parallel on
            (default: this process alone). On ranks other than 0 nothing is
            written or printed.
        bucket_bytes: size of the flat gradient buffers reduced in one call.

    Attributes:
        epoch: number of finished epochs (the next epoch to run is ``epoch + 1``).
        history: one dict per finished epoch (keys :data:`METRIC_KEYS`).
        best_acc: best test accuracy so far; ``best_epoch`` its epoch.
        last_eval: the latest :class:`Evaluation` on the test set.
    """

    def __init__(self, model, train_data, test_data, config: TrainConfig | None = None,
                 out_dir="runs/train", dataset: str = "mnist", mean=0.0, std=1.0,
                 class_names: Sequence[str] | None = None, quiet: bool = False,
                 plots: bool = True, stream=None, tensorboard=None, world=None,
                 bucket_bytes: int = distributed.DEFAULT_BUCKET_BYTES):
        self.model = model
        self.config = TrainConfig() if config is None else config
        self.world = distributed.SINGLE_PROCESS if world is None else world
        main = self.world.is_main
        self.x_train, self.y_train = self._check_data(train_data, "train_data")
        self.x_test, self.y_test = self._check_data(test_data, "test_data")
        self.out_dir = os.fspath(out_dir)
        self.dataset = str(dataset)
        self.mean, self.std = _stat(mean), _stat(std)
        num_classes = int(getattr(model, "config", {}).get("num_classes", 10))
        self.class_names = ([str(c) for c in class_names] if class_names is not None
                            else [str(i) for i in range(num_classes)])
        self.plots = plots and main
        self.progress = Progress(self.config.epochs, len(self.x_train), stream,
                                 quiet or not main)
        self.metrics_log = MetricsLog(self.path("metrics.jsonl"))
        self.tensorboard = TensorBoardLog(tensorboard) if tensorboard and main else None

        cfg = self.config
        self.steps_per_epoch = -(-len(self.x_train) // cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warmup_steps = min(int(round(cfg.warmup_epochs * self.steps_per_epoch)),
                           self.total_steps)
        self.schedule = WarmupCosine(cfg.lr, warmup_steps, self.total_steps, cfg.min_lr)
        self.optimizer = self._make_optimizer()

        self.epoch = 0
        self.history: list[dict] = []
        self.best_acc = -1.0
        self.best_epoch = 0
        self.last_eval: Evaluation | None = None
        self._elapsed_before = 0.0   # seconds spent in earlier (resumed) sessions
        self.buckets = self._setup_ranks(bucket_bytes) if self.world.distributed else None
        # one replica of the model per core, each on a slice of every batch; as
        # threads under MPI (forking an MPI process is not safe)
        self.replicas = Replicas(model, processes=False if self.world.distributed else None)

    # -- setup ----------------------------------------------------------------
    @staticmethod
    def _check_data(data, what):
        try:
            x, y = data
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a pair (x, y) of NumPy arrays") from None
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind != "f" or x.ndim != 4:
            raise ValueError(f"{what}: x must be float images (N, C, H, W), normalised; "
                             f"got dtype {x.dtype}, shape {x.shape} "
                             "(use minivit.data.normalize)")
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise ValueError(f"{what}: y must be integer labels of shape ({len(x)},), "
                             f"got dtype {y.dtype}, shape {y.shape}")
        if len(x) == 0:
            raise ValueError(f"{what} is empty")
        return x, y.astype(np.int64)

    def _setup_ranks(self, bucket_bytes: int):
        """Check that all ranks agree, give them rank 0's weights, and put the
        gradients into flat buckets."""
        world, cfg = self.world, self.config
        sample = slice(None, None, max(1, len(self.x_train) // 4096))
        distributed.check_same_everywhere(world, {
            **distributed.flatten(self.checkpoint_config()),
            "training images": len(self.x_train),
            "test images": len(self.x_test),
            "training data digest": distributed.fingerprint(self.x_train[sample]),
            "training labels digest": distributed.fingerprint(self.y_train),
            "test labels digest": distributed.fingerprint(self.y_test),
        })
        if cfg.batch_size % world.size:
            lower = cfg.batch_size - cfg.batch_size % world.size
            err = distributed.DistributedError(
                f"the batch of {cfg.batch_size} images does not split over {world.size} "
                f"ranks: use a multiple of {world.size} (--batch-size {lower or world.size} "
                f"or {lower + world.size}) or a number of ranks that divides "
                f"{cfg.batch_size}")
            err.all_ranks = True
            raise err
        distributed.broadcast_parameters(self.model, world)
        return distributed.GradientBuckets(self.model.parameters(), world, bucket_bytes)

    def _make_optimizer(self):
        cfg = self.config
        groups = param_groups_weight_decay(self.model.named_parameters(), cfg.weight_decay)
        if cfg.backbone_lr_scale != 1.0:              # fine-tuning: the head vs the rest
            groups = split_head_groups(groups, cfg.backbone_lr_scale)
        groups = [g for g in groups if g["params"]]   # e.g. no 1-D params at all
        if cfg.optimizer == "adamw":
            return AdamW(groups, lr=cfg.lr)
        return SGD(groups, lr=cfg.lr, momentum=cfg.momentum)

    def checkpoint_config(self) -> dict:
        """The ``config`` stored in every checkpoint.

        ``model`` is the ViT's constructor kwargs (``ViT(**config["model"])``
        rebuilds it), ``mean``/``std`` the normalisation of the inputs,
        ``dataset`` its name; ``train`` holds the hyperparameters.
        """
        train = self.config.to_dict()
        train["dtype"] = str(np.dtype(getattr(self.model, "dtype", np.float32)))
        train["backend"] = backend.name
        return {
            "model": dict(self.model.config),
            "dataset": self.dataset,
            "mean": self.mean,
            "std": self.std,
            "class_names": list(self.class_names),
            "train": train,
        }

    # -- paths ----------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    @property
    def last_path(self) -> str:
        return self.path("last.npz")

    @property
    def best_path(self) -> str:
        return self.path("best.npz")

    # -- saving and resuming --------------------------------------------------
    def save(self, path) -> str:
        """Write a checkpoint of the current state (atomic; rank 0 only)."""
        if not self.world.is_main:
            return os.fspath(path)
        return save_checkpoint(
            path, self.model.state_dict(), self.optimizer.state_dict(),
            epoch=self.epoch, config=self.checkpoint_config(),
            rng_state=backend.get_rng_state(),
            extra={"best_acc": self.best_acc, "best_epoch": self.best_epoch,
                   "history": self.history},
        )

    def resume(self, path=None) -> int:
        """Restore model, optimizer, epoch counter, history and best accuracy
        from a checkpoint (default ``<out_dir>/last.npz``).

        The model's architecture must match the saved one (else ValueError).
        Different training hyperparameters are allowed but warned about,
        since the continued run then differs from an uninterrupted one.
        Returns the number of finished epochs.
        """
        path = self.last_path if path is None else os.fspath(path)
        # Rank 0 reads the file and sends it to the others (no shared disk
        # needed); an error there is raised on every rank.
        ckpt, error = None, None
        if self.world.is_main:
            try:
                ckpt = self._read_checkpoint(path)
            except (OSError, ValueError) as exc:
                error = exc
        ckpt, error = self.world.broadcast((ckpt, error))
        if error is not None:
            error.all_ranks = True
            raise error
        saved = ckpt["config"]
        saved_model = {**_constructor_defaults(type(self.model)), **saved.get("model", {})}
        model_diff = _config_differences(saved_model, dict(self.model.config))
        if model_diff:
            raise ValueError(
                f"cannot resume from {path}: the model differs from the saved one ("
                + "; ".join(model_diff)
                + "). Use the same model settings as the run being resumed.")
        train_now = self.checkpoint_config()["train"]
        train_diff = _config_differences(saved.get("train", {}), train_now)
        train_diff = [d for d in train_diff if not d.startswith("backend:")]
        if train_diff and self.world.is_main:
            warnings.warn(
                f"resuming from {path} with different training settings ("
                + "; ".join(train_diff)
                + "); the result will differ from an uninterrupted run",
                RuntimeWarning, stacklevel=2)
        self.model.load_state_dict(ckpt["model"])
        if ckpt["optimizer"] is None:
            raise ValueError(f"cannot resume from {path}: it holds no optimizer state")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["rng_state"] is not None:
            backend.set_rng_state(ckpt["rng_state"])
        extra = ckpt["extra"]
        self.epoch = ckpt["epoch"]
        self.history = list(extra.get("history", []))
        self.best_acc = float(extra.get("best_acc", -1.0))
        self.best_epoch = int(extra.get("best_epoch", 0))
        self._elapsed_before = float(self.history[-1]["elapsed_s"]) if self.history else 0.0
        # metrics.jsonl may hold epochs after the checkpoint (a crash between
        # the two writes): rewrite it from the checkpoint's history.
        if self.world.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            self.metrics_log.rewrite(self.history)
        return self.epoch

    @staticmethod
    def _read_checkpoint(path: str) -> dict:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"cannot resume: {path} does not exist (no finished epoch was saved "
                "in this output folder); drop --resume to start a new run, or pass "
                "the --out folder of the run to continue")
        return load_checkpoint(path)

    # -- the loop -------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train from epoch ``self.epoch + 1`` to ``config.epochs``.

        Args:
            stop_after: stop once this many epochs are finished (the lr
                schedule still spans ``config.epochs``); ``resume()`` later
                continues exactly where it stopped.
        Returns:
            The history, one dict per finished epoch.
        Raises:
            NonFiniteLossError: the loss became inf/NaN. Nothing of the failed
                epoch is saved; last.npz still holds the previous epoch.
        """
        if self.world.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            if self.epoch == 0:
                self.metrics_log.rewrite([])      # a new run: start afresh
        end = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        session_start = time.perf_counter()
        try:
            for epoch in range(self.epoch + 1, end + 1):
                epoch_start = time.perf_counter()
                comm_start = self.world.comm_seconds
                train_loss, train_acc, train_time = self.train_epoch(epoch)
                result = self.evaluate()
                if not math.isfinite(result.loss):
                    # weights went non-finite in the last step(s): do not save them
                    raise NonFiniteLossError(self._diverged_message(
                        f"the test loss is {result.loss}", epoch, None))
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
                if self.world.is_main:
                    self.metrics_log.append(record)
                if self.plots:
                    self.make_plots()
                if self.tensorboard is not None:
                    self._log_epoch_to_tensorboard(record)
                self.progress.end_epoch(record, improved)
        finally:
            self.progress.close()
            if self.tensorboard is not None:
                self.tensorboard.flush()
        return self.history

    def train_epoch(self, epoch: int):
        """One pass over the training set. Returns (mean loss, accuracy, seconds)."""
        cfg, world = self.config, self.world
        # Everything random in this epoch derives from (seed, epoch) only: the
        # same shuffle and augmentation draws on every rank; dropout masks
        # (rank 0's as in one process) differ between ranks.
        backend.seed(_rank_seed(cfg.seed * 1000 + epoch, world.rank))   # dropout masks
        rng = np.random.default_rng([cfg.seed, epoch])       # shuffle + augmentation
        background = -np.asarray(self.mean) / np.asarray(self.std)   # normalised 0
        self.model.train()
        params = self.model.parameters()
        n_seen, loss_sum, correct = 0, 0.0, 0
        self.progress.start_epoch(epoch)
        start = time.perf_counter()
        batches = iterate_batches(self.x_train, self.y_train, cfg.batch_size,
                                  shuffle=True, rng=rng)
        for i, (xb_batch, yb_batch) in enumerate(batches):
            step = (epoch - 1) * self.steps_per_epoch + i     # global 0-based step
            lr = self.schedule.apply(self.optimizer, step)
            b = len(xb_batch)
            lo, hi = distributed.shard_bounds(b, world.rank, world.size)   # my rows
            xb_host, yb_host = xb_batch[lo:hi], yb_batch[lo:hi]
            transforms = (random_transforms(b, rng, cfg.max_shift, cfg.max_rotate)
                          if cfg.augment else None)          # drawn for the whole batch
            if transforms is not None:
                xb_host = warp_affine(xb_host, *(t[lo:hi] for t in transforms), background)
            self.optimizer.zero_grad()
            loss, hits = self._forward_backward(xb_host, yb_host)
            if self.buckets is not None:
                # g <- sum_r (n_r / b) g_r: the gradient of the whole batch's mean loss
                self.buckets.allreduce_((hi - lo) / b)
                loss_total, hits = world.sum([loss * (hi - lo), hits])
                loss = float(loss_total) / b
            if not math.isfinite(loss):
                raise NonFiniteLossError(self._diverged_message(
                    f"the training loss is {loss}", epoch, i, lr))
            norm = None
            if cfg.clip_grad is not None:
                norm = clip_grad_norm_(params, cfg.clip_grad)
                if not math.isfinite(norm):
                    raise NonFiniteLossError(self._diverged_message(
                        f"the gradient norm is {norm}", epoch, i, lr))
            self.optimizer.step()

            n_seen += b
            loss_sum += loss * b
            correct += int(hits)
            self.progress.step(b, loss_sum / n_seen, correct / n_seen)
            if self.tensorboard is not None:
                self.tensorboard.scalars(step, {"train/loss": loss, "train/lr": lr,
                                                "train/grad_norm": norm})
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
        cfg, world = self.config, self.world
        if not world.distributed:
            return evaluate(self.model, self.x_test, self.y_test,
                            cfg.eval_batch_size, cfg.label_smoothing, self.replicas.logits)
        n = len(self.x_test)
        lo, hi = distributed.shard_bounds(n, world.rank, world.size)
        mine = (evaluate(self.model, self.x_test[lo:hi], self.y_test[lo:hi],
                         cfg.eval_batch_size, cfg.label_smoothing, self.replicas.logits)
                if hi > lo else None)
        loss_sum, hits = world.sum([mine.loss * (hi - lo) if mine else 0.0,
                                    int((mine.predictions == self.y_test[lo:hi]).sum())
                                    if mine else 0])
        predictions = world.allgather(mine.predictions if mine else np.zeros(0, np.int64))
        return Evaluation(accuracy=float(hits) / n, loss=float(loss_sum) / n,
                          predictions=np.concatenate(predictions))

    def make_plots(self) -> None:
        """(Re)draw curves.png and confusion_matrix.png from the history and
        the latest evaluation."""
        if not self.history:
            return
        plot_curves(self.history, self.path("curves.png"))
        if self.last_eval is not None:
            cm = confusion_matrix(self.y_test, self.last_eval.predictions,
                                  len(self.class_names))
            plot_confusion_matrix(
                cm, self.class_names, self.path("confusion_matrix.png"),
                title=(f"{self.dataset} test set, epoch {self.epoch}: "
                       f"{100 * self.last_eval.accuracy:.2f}% correct"))

    def _log_epoch_to_tensorboard(self, record: dict) -> None:
        """Epoch scalars, and the attention rollout of the first few test images."""
        step = record["epoch"] * self.steps_per_epoch
        self.tensorboard.scalars(step, {
            "test/loss": record["test_loss"], "test/accuracy": record["test_acc"],
            "train/epoch_loss": record["train_loss"], "train/accuracy": record["train_acc"],
            "train/images_per_s": record["images_per_s"]})
        was_training = self.model.training
        self.model.eval()
        try:
            with no_grad():
                self.model.forward(backend.to_device(self.x_test[:TENSORBOARD_IMAGES]))
            maps = viz.upsample(viz.attention_rollout(self.model), self.x_test.shape[-2:])
        finally:
            self.model.train(was_training)
        for k, m in enumerate(maps):
            label = self.class_names[int(self.y_test[k])]
            self.tensorboard.image(f"attention_rollout/test_{k}_{label}", step,
                                   m / max(m.max(), 1e-12))

    # -- messages -------------------------------------------------------------
    def _diverged_message(self, what: str, epoch: int, step: int | None,
                          lr: float | None = None) -> str:
        where = (f"epoch {epoch}, step {step + 1}/{self.steps_per_epoch}"
                 if step is not None else f"the end of epoch {epoch}")
        lr_now = self.config.lr if lr is None else lr
        kept = (f"{self.last_path} (epoch {self.epoch}) is left unchanged"
                if self.epoch > 0 else "no checkpoint was written")
        clip = ("" if self.config.clip_grad else
                ", or enable gradient clipping (--clip-grad 1.0)")
        return (f"training diverged: {what} at {where} (lr {lr_now:.3g}). "
                f"Lower the learning rate (e.g. --lr {self.config.lr / 3:.2g}){clip}. "
                f"Stopped without saving: {kept}.")


def _constructor_defaults(cls) -> dict:
    """Default arguments of ``cls.__init__``: what a checkpoint written before
    an option existed was built with."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _rank_seed(seed: int, rank: int) -> int:
    """The dropout seed of a rank: ``seed`` itself on rank 0 (as in one
    process), an independent stream on every other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _stat(value):
    """A normalisation statistic as saved: a float, or a tuple of per-channel floats."""
    arr = np.asarray(value, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr.ravel())


def split_head_groups(groups: list[dict], backbone_lr_scale: float) -> list[dict]:
    """Each parameter group split into the head (``head.*``, full lr) and the
    backbone (lr x ``backbone_lr_scale``; left out when that is 0, so the
    optimizer never touches it: a frozen backbone)."""
    out = []
    for group in groups:
        head = [(n, p) for n, p in group["params"] if n.startswith("head.")]
        body = [(n, p) for n, p in group["params"] if not n.startswith("head.")]
        out.append({**group, "params": head})
        if backbone_lr_scale > 0:
            out.append({**group, "params": body, "lr_scale": backbone_lr_scale})
    return out

