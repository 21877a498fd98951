"""What the loop tells the world after each step and epoch: the progress
display, ``metrics.jsonl``, the plots and TensorBoard.

:class:`RunReport` gathers the pieces of :mod:`minivit.reporting` for one run.
Only rank 0 writes or prints (on the other ranks it is silent), and only
host values arrive here: Python floats, NumPy arrays.
"""

from __future__ import annotations

import os

from minivit import backend, viz
from minivit.metrics import confusion_matrix
from minivit.module import no_grad
from minivit.reporting import (
    MetricsLog,
    Progress,
    TensorBoardLog,
    plot_confusion_matrix,
    plot_curves,
)

__all__ = ["RunReport", "TENSORBOARD_IMAGES"]

# Test images whose attention maps go to TensorBoard each epoch.
TENSORBOARD_IMAGES = 4


class RunReport:
    """Progress, metrics log, plots and TensorBoard of one training run.

    Args:
        out_dir: the run's folder (``metrics.jsonl``, ``curves.png``,
            ``confusion_matrix.png``).
        epochs, images_per_epoch: for the progress display.
        main: this is rank 0 (the only one that writes or prints).
        quiet, stream: see :class:`minivit.reporting.Progress`.
        plots: draw the PNGs after every epoch.
        tensorboard: a folder for TensorBoard event files, or None.
    """

    def __init__(self, out_dir: str, epochs: int, images_per_epoch: int, main: bool = True,
                 quiet: bool = False, stream=None, plots: bool = True, tensorboard=None):
        self.out_dir = out_dir
        self.main = main
        self.plots = plots and main
        self.progress = Progress(epochs, images_per_epoch, stream, quiet or not main)
        self.metrics_log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"))
        self.tensorboard = TensorBoardLog(tensorboard) if tensorboard and main else None

    def start_run(self, history: list[dict]) -> None:
        """Before the first epoch of a session: the folder exists and
        ``metrics.jsonl`` holds exactly ``history`` (empty for a new run; a
        resumed one may have logged epochs after its checkpoint, a crash
        between the two writes)."""
        if self.main:
            os.makedirs(self.out_dir, exist_ok=True)
            self.metrics_log.rewrite(history)

    def step(self, step: int, images: int, mean_loss: float, accuracy: float,
             scalars: dict) -> None:
        """After each optimizer step: the progress bar and TensorBoard scalars."""
        self.progress.step(images, mean_loss, accuracy)
        if self.tensorboard is not None:
            self.tensorboard.scalars(step, scalars)

    def end_epoch(self, trainer, record: dict, improved: bool) -> None:
        """After each epoch's checkpoint: the log line, plots, TensorBoard."""
        if self.main:
            self.metrics_log.append(record)
        if self.plots:
            self.make_plots(trainer)
        if self.tensorboard is not None:
            self._tensorboard_epoch(trainer, record)
        self.progress.end_epoch(record, improved)

    def close(self) -> None:
        """At the end of a session (also after an error)."""
        self.progress.close()
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def make_plots(self, trainer) -> None:
        """(Re)draw curves.png and confusion_matrix.png from the trainer's
        history and latest evaluation."""
        if not trainer.history:
            return
        plot_curves(trainer.history, os.path.join(self.out_dir, "curves.png"))
        if trainer.last_eval is not None:
            cm = confusion_matrix(trainer.y_test, trainer.last_eval.predictions,
                                  len(trainer.class_names))
            plot_confusion_matrix(
                cm, trainer.class_names, os.path.join(self.out_dir, "confusion_matrix.png"),
                title=(f"{trainer.dataset} test set, epoch {trainer.epoch}: "
                       f"{100 * trainer.last_eval.accuracy:.2f}% correct"))

    def _tensorboard_epoch(self, trainer, record: dict) -> None:
        """Epoch scalars, and the attention rollout of the first few test images."""
        step = record["epoch"] * trainer.steps_per_epoch
        self.tensorboard.scalars(step, {
            "test/loss": record["test_loss"], "test/accuracy": record["test_acc"],
            "train/epoch_loss": record["train_loss"], "train/accuracy": record["train_acc"],
            "train/images_per_s": record["images_per_s"]})
        model, x_test = trainer.model, trainer.x_test
        was_training = model.training
        model.eval()
        try:
            with no_grad():
                model.forward(backend.to_device(x_test[:TENSORBOARD_IMAGES]))
            maps = viz.upsample(viz.attention_rollout(model), x_test.shape[-2:])
        finally:
            model.train(was_training)
        for k, m in enumerate(maps):
            label = trainer.class_names[int(trainer.y_test[k])]
            self.tensorboard.image(f"attention_rollout/test_{k}_{label}", step,
                                   m / max(m.max(), 1e-12))
