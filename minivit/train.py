"""Training loop: epochs of mini-batch training, a test evaluation each epoch.

One training step, in the order the code runs it::

    lr = schedule(global_step)        # WarmupCosine, set before every step
    zero_grad()
    logits = model.forward(xb)        # model.train(): dropout active
    loss, dlogits = cross_entropy(logits, yb, label_smoothing)
    model.backward(dlogits)
    clip_grad_norm_(params, clip)     # optional
    optimizer.step()

After each epoch the model is evaluated on the test set (``model.eval()``,
no backward), then the trainer writes into its output folder:

* ``last.npz``  the state after this epoch (weights, optimizer, epoch, rng,
  config, history), and ``best.npz`` when the test accuracy is a new best;
* ``metrics.jsonl``  one JSON line per epoch;
* ``curves.png`` and ``confusion_matrix.png`` (when matplotlib is installed).

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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
import warnings
from typing import Sequence

import numpy as np

from minivit import backend
from minivit.atomic import save_figure, write_text
from minivit.checkpoint import load_checkpoint, save_checkpoint
from minivit.data import augment as augment_batch
from minivit.data import iterate_batches
from minivit.loss import cross_entropy
from minivit.optim import SGD, AdamW, WarmupCosine, clip_grad_norm_, param_groups_weight_decay

__all__ = [
    "TrainConfig",
    "Evaluation",
    "NonFiniteLossError",
    "Trainer",
    "evaluate",
    "confusion_matrix",
    "plot_curves",
    "plot_confusion_matrix",
    "format_duration",
    "METRIC_KEYS",
]

OPTIMIZERS = ("adamw", "sgd")

# The keys of every line of metrics.jsonl (and of every history entry).
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
               "epoch_time_s", "images_per_s", "elapsed_s")


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became inf/NaN: training diverged."""


@dataclasses.dataclass
class TrainConfig:
    """Training hyperparameters (saved as ``config["train"]`` in checkpoints).

    Attributes:
        epochs: number of passes over the training set; fixes the schedule.
        batch_size: images per optimizer step (the last batch may be smaller).
        lr: peak learning rate, reached at the end of the warm-up.
        min_lr: learning rate the cosine decays to at the very end.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        weight_decay: decoupled (AdamW) or L2 (SGD) decay of the weight
            matrices; biases, LayerNorm gains, cls_token and pos_embed get none.
        optimizer: ``"adamw"`` or ``"sgd"``.
        momentum: SGD momentum (ignored by AdamW).
        label_smoothing: target smoothing of the cross-entropy, in [0, 1).
        clip_grad: max global gradient norm, or None for no clipping.
        augment: random shifts/rotations of the training images.
        max_shift: largest shift in pixels (each axis).
        max_rotate: largest rotation in degrees.
        seed: seeds shuffling, augmentation and dropout (the model's own
            initialisation is seeded where it is built).
        eval_batch_size: batch size for evaluation (no backward: can be large).
    """

    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    label_smoothing: float = 0.0
    clip_grad: float | None = 1.0
    augment: bool = False
    max_shift: int = 2
    max_rotate: float = 10.0
    seed: int = 0
    eval_batch_size: int = 500

    def __post_init__(self):
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if int(self.eval_batch_size) != self.eval_batch_size or self.eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 or None, got {self.clip_grad}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)
        self.eval_batch_size, self.seed = int(self.eval_batch_size), int(self.seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Evaluation:
    """Result of :func:`evaluate`: accuracy in [0, 1], mean loss, and the
    predicted class of every image (host int64 array, for a confusion matrix)."""

    accuracy: float
    loss: float
    predictions: np.ndarray


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------
def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500,
             label_smoothing: float = 0.0) -> Evaluation:
    """Accuracy, mean loss and predictions of ``model`` on ``(x, y)``.

    Runs in eval mode (dropout off), forward only, in batches; the model's
    previous train/eval mode is restored afterwards.

    Args:
        x: host float images (N, C, H, W), already normalised.
        y: host integer labels (N,).
    """
    n = len(x)
    if n == 0:
        raise ValueError("evaluate needs at least one image")
    was_training = model.training
    model.eval()
    try:
        total_loss, preds = 0.0, []
        for start in range(0, n, batch_size):
            xb = backend.to_device(x[start:start + batch_size])
            yb = backend.to_device(y[start:start + batch_size])
            logits = model.forward(xb)
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


# --------------------------------------------------------------------------
# Plots (matplotlib is optional: imported lazily, skipped with a warning)
# --------------------------------------------------------------------------
def _new_figure(**kwargs):
    """A matplotlib Figure drawn with Agg, or None when matplotlib is missing.

    The object-oriented API (Figure + FigureCanvasAgg) never touches pyplot's
    global state, so it works headless and leaves an interactive session's
    backend alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping plots "
                      "(pip install matplotlib to get curves.png and "
                      "confusion_matrix.png)", RuntimeWarning, stacklevel=3)
        return None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(history: Sequence[dict], path) -> str | None:
    """Loss and accuracy (train and test) against the epoch, side by side.

    Returns the path written, or None when matplotlib is missing.
    """
    fig = _new_figure(figsize=(10, 4))
    if fig is None:
        return None
    epochs = [h["epoch"] for h in history]
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["test_acc"] for h in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path,
                          title: str = "Confusion matrix") -> str | None:
    """The (K, K) matrix as an image with the count in every cell.

    Returns the path written, or None when matplotlib is missing.
    """
    fig = _new_figure(figsize=(7, 6))
    if fig is None:
        return None
    cm = np.asarray(cm)
    k = len(cm)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            # white text on dark cells, black on light ones
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _config_differences(saved: dict, current: dict) -> list[str]:
    """``["key: saved -> current", ...]`` for every key that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


# --------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------
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
        mean, std: the normalisation used for x (saved, so that prediction
            tools normalise new images the same way; also gives the
            background value that augmentation fills in).
        class_names: names for the confusion matrix (default "0", "1", ...).
        quiet: print nothing. Otherwise a live progress line on a terminal,
            and one summary line per epoch.
        plots: write curves.png and confusion_matrix.png each epoch.
        stream: where progress goes (default sys.stdout).

    Attributes:
        epoch: number of finished epochs (the next epoch to run is ``epoch + 1``).
        history: one dict per finished epoch (keys :data:`METRIC_KEYS`).
        best_acc: best test accuracy so far; ``best_epoch`` its epoch.
        last_eval: the latest :class:`Evaluation` on the test set.
    """

    def __init__(self, model, train_data, test_data, config: TrainConfig | None = None,
                 out_dir="runs/train", dataset: str = "mnist", mean: float = 0.0,
                 std: float = 1.0, class_names: Sequence[str] | None = None,
                 quiet: bool = False, plots: bool = True, stream=None):
        self.model = model
        self.config = TrainConfig() if config is None else config
        self.x_train, self.y_train = self._check_data(train_data, "train_data")
        self.x_test, self.y_test = self._check_data(test_data, "test_data")
        self.out_dir = os.fspath(out_dir)
        self.dataset = str(dataset)
        self.mean, self.std = float(mean), float(std)
        num_classes = int(getattr(model, "config", {}).get("num_classes", 10))
        self.class_names = ([str(c) for c in class_names] if class_names is not None
                            else [str(i) for i in range(num_classes)])
        self.quiet = quiet
        self.plots = plots
        self.stream = sys.stdout if stream is None else stream

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
        self._last_len = 0           # length of the live progress line

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

    def _make_optimizer(self):
        cfg = self.config
        groups = param_groups_weight_decay(self.model.named_parameters(), cfg.weight_decay)
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
        """Write a checkpoint of the current state (atomic)."""
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
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"cannot resume: {path} does not exist (no finished epoch was saved "
                "in this output folder); drop --resume to start a new run, or pass "
                "the --out folder of the run to continue")
        ckpt = load_checkpoint(path)
        saved = ckpt["config"]
        model_diff = _config_differences(saved.get("model", {}), dict(self.model.config))
        if model_diff:
            raise ValueError(
                f"cannot resume from {path}: the model differs from the saved one ("
                + "; ".join(model_diff)
                + "). Use the same model settings as the run being resumed.")
        train_now = self.checkpoint_config()["train"]
        train_diff = _config_differences(saved.get("train", {}), train_now)
        train_diff = [d for d in train_diff if not d.startswith("backend:")]
        if train_diff:
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
        os.makedirs(self.out_dir, exist_ok=True)
        write_text(self.path("metrics.jsonl"),
                           "".join(json.dumps(h) + "\n" for h in self.history))
        return self.epoch

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
        os.makedirs(self.out_dir, exist_ok=True)
        if self.epoch == 0:
            # a new run: start metrics.jsonl afresh
            write_text(self.path("metrics.jsonl"), "")
        end = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        session_start = time.perf_counter()
        for epoch in range(self.epoch + 1, end + 1):
            epoch_start = time.perf_counter()
            train_loss, train_acc, train_time = self.train_epoch(epoch)
            result = evaluate(self.model, self.x_test, self.y_test,
                              self.config.eval_batch_size, self.config.label_smoothing)
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
            }
            self.epoch = epoch
            self.history.append(record)
            self.last_eval = result
            improved = result.accuracy > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = result.accuracy, epoch
            # checkpoint first, then the log: a crash in between is repaired
            # by resume(), which rewrites metrics.jsonl from the checkpoint
            self.save(self.last_path)
            if improved:
                self.save(self.best_path)
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.plots:
                self.make_plots()
            self._print_summary(record, improved)
        return self.history

    def train_epoch(self, epoch: int):
        """One pass over the training set. Returns (mean loss, accuracy, seconds)."""
        cfg = self.config
        # Everything random in this epoch derives from (seed, epoch) only.
        backend.seed(cfg.seed * 1000 + epoch)                 # dropout masks
        rng = np.random.default_rng([cfg.seed, epoch])       # shuffle + augmentation
        aug = None
        if cfg.augment:
            aug = functools.partial(augment_batch, max_shift=cfg.max_shift,
                                    max_rotate_deg=cfg.max_rotate,
                                    fill=-self.mean / self.std)  # normalised background
        self.model.train()
        params = self.model.parameters()
        n_seen, loss_sum, correct = 0, 0.0, 0
        start = time.perf_counter()
        last_draw = 0.0
        batches = iterate_batches(self.x_train, self.y_train, cfg.batch_size,
                                  shuffle=True, rng=rng, augment=aug)
        for i, (xb_host, yb_host) in enumerate(batches):
            step = (epoch - 1) * self.steps_per_epoch + i     # global 0-based step
            lr = self.schedule.apply(self.optimizer, step)
            xb = backend.to_device(xb_host)
            yb = backend.to_device(yb_host)
            self.optimizer.zero_grad()
            logits = self.model.forward(xb)
            loss, dlogits = cross_entropy(logits, yb, cfg.label_smoothing)
            if not math.isfinite(loss):
                raise NonFiniteLossError(self._diverged_message(
                    f"the training loss is {loss}", epoch, i, lr))
            self.model.backward(dlogits)
            if cfg.clip_grad is not None:
                norm = clip_grad_norm_(params, cfg.clip_grad)
                if not math.isfinite(norm):
                    raise NonFiniteLossError(self._diverged_message(
                        f"the gradient norm is {norm}", epoch, i, lr))
            self.optimizer.step()

            b = len(xb_host)
            n_seen += b
            loss_sum += loss * b
            correct += int((logits.argmax(axis=1) == yb).sum())  # one scalar to host
            now = time.perf_counter()
            if self._live and (now - last_draw > 0.2 or i + 1 == self.steps_per_epoch):
                last_draw = now
                self._print_progress(epoch, i + 1, loss_sum / n_seen, correct / n_seen,
                                     n_seen / (now - start), now - start)
        backend.synchronize()
        return loss_sum / n_seen, correct / n_seen, time.perf_counter() - start

    def evaluate(self) -> Evaluation:
        """Evaluate the current model on the test set."""
        return evaluate(self.model, self.x_test, self.y_test,
                        self.config.eval_batch_size, self.config.label_smoothing)

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

    @property
    def _live(self) -> bool:
        """A live progress line only on an interactive terminal."""
        if self.quiet:
            return False
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:   # closed stream
            return False

    def _print_progress(self, epoch, step, loss, acc, images_per_s, epoch_s):
        epoch_left = (self.steps_per_epoch - step) * epoch_s / step
        # later epochs: as long as the last full one (training + evaluation),
        # or this one's projected training time before any epoch finished
        per_epoch = (self.history[-1]["epoch_time_s"] if self.history
                     else epoch_s * self.steps_per_epoch / step)
        run_left = epoch_left + (self.config.epochs - epoch) * per_epoch
        line = (f"epoch {epoch}/{self.config.epochs} [{step}/{self.steps_per_epoch}] "
                f"loss {loss:.4f} acc {100 * acc:.2f}% {images_per_s:.0f} img/s "
                f"epoch left {format_duration(epoch_left)} "
                f"run left {format_duration(run_left)}")
        self.stream.write("\r" + line.ljust(self._last_len))
        self._last_len = len(line)
        self.stream.flush()

    def _print_summary(self, r: dict, improved: bool) -> None:
        if self.quiet:
            return
        width = len(str(self.config.epochs))
        line = (f"epoch {r['epoch']:>{width}}/{self.config.epochs}  "
                f"train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
                f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%"
                f"{' *' if improved else '  '}  lr {r['lr']:.2e}  "
                f"{r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f} s  "
                f"elapsed {format_duration(r['elapsed_s'])}")
        if self._live:
            line = "\r" + line.ljust(self._last_len)
            self._last_len = 0
        self.stream.write(line + "\n")
        self.stream.flush()
