"""What a training run reports: progress, per-epoch lines, metrics log, plots, TensorBoard.

* :class:`Progress`: on a terminal, a tqdm bar per epoch (images done, loss,
  accuracy, img/s, time left); whatever the output, one plain line per
  finished epoch (CI logs and files get only those lines).
* :class:`MetricsLog`: ``metrics.jsonl``, one JSON object per epoch.
* :func:`plot_curves`, :func:`plot_confusion_matrix`: PNGs written atomically
  (skipped with a warning where matplotlib is missing).
* :class:`TensorBoardLog`: scalars and attention maps as TensorBoard event
  files, through tensorboardX (the ``[tensorboard]`` extra).

Only host values arrive here (Python floats, NumPy arrays): the trainer
brings them over from the device.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from minivit.atomic import save_figure, write_text

__all__ = [
    "METRIC_KEYS",
    "Progress",
    "MetricsLog",
    "TensorBoardLog",
    "plot_curves",
    "plot_confusion_matrix",
    "format_duration",
]

# The keys of every line of metrics.jsonl (and of every history entry).
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
               "epoch_time_s", "images_per_s", "elapsed_s", "comm_time_s")


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:   # closed stream
        return False


class Progress:
    """Progress of a run on ``stream`` (default stdout).

    Args:
        epochs: epochs in the whole run.
        images_per_epoch: training images per epoch (the bar's total).
        stream: where to write; a bar appears only when it is a terminal.
        quiet: write nothing at all.
    """

    def __init__(self, epochs: int, images_per_epoch: int, stream=None, quiet: bool = False):
        self.epochs = epochs
        self.images_per_epoch = images_per_epoch
        self.stream = sys.stdout if stream is None else stream
        self.quiet = quiet
        self.live = not quiet and _is_terminal(self.stream)
        self._bar = None
        self._epoch = 0
        self._last_epoch_s = None   # duration of the last finished epoch

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if self.live:
            self._bar = tqdm(total=self.images_per_epoch, unit="img", unit_scale=False,
                             desc=f"epoch {epoch}/{self.epochs}", file=self.stream,
                             leave=False, dynamic_ncols=True, mininterval=0.2)

    def step(self, images: int, loss: float, acc: float) -> None:
        """``images`` more done; ``loss``/``acc`` are the running epoch means."""
        bar = self._bar
        if bar is None:
            return
        done = bar.n + images
        elapsed = bar.format_dict["elapsed"]
        # the rest of the run: the rest of this epoch, then epochs as long as
        # the last full one (or as this one is projected to be)
        per_epoch = self._last_epoch_s or elapsed * bar.total / max(done, 1)
        run_left = (elapsed * (bar.total - done) / max(done, 1)
                    + (self.epochs - self._epoch) * per_epoch)
        bar.set_postfix_str(f"loss {loss:.4f} acc {100 * acc:.2f}% "
                            f"run left {format_duration(run_left)}", refresh=False)
        bar.update(images)
        if done >= bar.total:       # show the epoch's final figures even if it was quick
            bar.refresh()

    def end_epoch(self, record: dict, improved: bool) -> None:
        """Close the bar and write the epoch's one-line summary."""
        self._last_epoch_s = record["epoch_time_s"]
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.quiet:
            return
        r = record
        width = len(str(self.epochs))
        line = (f"epoch {r['epoch']:>{width}}/{self.epochs}  "
                f"train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
                f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%"
                f"{' *' if improved else '  '}  lr {r['lr']:.2e}  "
                f"{r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f} s"
                + (f" (allreduce {r['comm_time_s']:.1f} s)" if r.get("comm_time_s") else "")
                + f"  elapsed {format_duration(r['elapsed_s'])}")
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class MetricsLog:
    """``metrics.jsonl``: one JSON line per finished epoch (keys :data:`METRIC_KEYS`)."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def rewrite(self, history: Sequence[dict]) -> None:
        """Replace the file with ``history`` (atomic): a new run, or a resume."""
        write_text(self.path, "".join(json.dumps(h) + "\n" for h in history))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoardLog:
    """Scalars and images as TensorBoard event files in ``logdir``.

    Needs tensorboardX (``pip install -e ".[tensorboard]"``); view with
    ``tensorboard --logdir DIR``.
    """

    def __init__(self, logdir):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(
                "--tensorboard needs tensorboardX, which is not installed; install the "
                "extra with `pip install -e \".[tensorboard]\"` (or `pip install tensorboardX`)"
            ) from None
        self.logdir = os.fspath(logdir)
        self.writer = SummaryWriter(self.logdir)

    def scalars(self, step: int, values: dict) -> None:
        """``values``: tag -> Python float, e.g. ``{"train/loss": 0.1}``."""
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """``image``: float (H, W) or (H, W, 3) in [0, 1]."""
        fmt = "HW" if image.ndim == 2 else "HWC"
        self.writer.add_image(tag, np.clip(image, 0, 1), step, dataformats=fmt)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


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


def format_duration(seconds: float) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
