"""Saving a run and continuing it: what a checkpoint holds and how a resume
checks that it continues the same run.

A checkpoint (:func:`minivit.checkpoint.save_checkpoint`, written atomically)
holds the model's and the optimizer's state, the number of finished epochs,
the backend's random state, and ``config``: the model's constructor kwargs,
the normalisation, the dataset and the training hyperparameters. Because
everything random in an epoch derives from ``(seed, epoch)`` and the learning
rate from the global step, a run resumed from ``last.npz`` performs exactly
the arithmetic of a run that never stopped.

Under MPI rank 0 alone writes; on resume it reads the file and broadcasts it,
and an error reading it is raised on every rank together.
"""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np

from minivit import backend
from minivit.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["checkpoint_config", "save", "resume"]


def checkpoint_config(trainer) -> dict:
    """The ``config`` stored in every checkpoint of ``trainer``'s run.

    ``model`` is the ViT's constructor kwargs (``ViT(**config["model"])``
    rebuilds it), ``mean``/``std`` the normalisation of the inputs,
    ``dataset`` its name; ``train`` holds the hyperparameters.
    """
    train = trainer.config.to_dict()
    train["dtype"] = str(np.dtype(getattr(trainer.model, "dtype", np.float32)))
    train["backend"] = backend.name
    return {
        "model": dict(trainer.model.config),
        "dataset": trainer.dataset,
        "mean": trainer.mean,
        "std": trainer.std,
        "class_names": list(trainer.class_names),
        "train": train,
    }


def save(trainer, path) -> str:
    """Write a checkpoint of the trainer's current state (rank 0 only)."""
    if not trainer.world.is_main:
        return os.fspath(path)
    return save_checkpoint(
        path, trainer.model.state_dict(), trainer.optimizer.state_dict(),
        epoch=trainer.epoch, config=checkpoint_config(trainer),
        rng_state=backend.get_rng_state(),
        extra={"best_acc": trainer.best_acc, "best_epoch": trainer.best_epoch,
               "history": trainer.history},
    )


def resume(trainer, path) -> int:
    """Restore the trainer from the checkpoint at ``path``; returns the
    number of finished epochs. See :meth:`minivit.training.Trainer.resume`."""
    world = trainer.world
    ckpt, error = None, None
    if world.is_main:
        try:
            ckpt = _read(path)
        except (OSError, ValueError) as exc:
            error = exc
    ckpt, error = world.broadcast((ckpt, error))
    if error is not None:
        error.all_ranks = True
        raise error
    saved = ckpt["config"]
    saved_model = {**_constructor_defaults(type(trainer.model)), **saved.get("model", {})}
    model_diff = _differences(saved_model, dict(trainer.model.config))
    if model_diff:
        raise ValueError(
            f"cannot resume from {path}: the model differs from the saved one ("
            + "; ".join(model_diff)
            + "). Use the same model settings as the run being resumed.")
    train_diff = _differences(saved.get("train", {}), checkpoint_config(trainer)["train"])
    train_diff = [d for d in train_diff if not d.startswith("backend:")]
    if train_diff and world.is_main:
        warnings.warn(
            f"resuming from {path} with different training settings ("
            + "; ".join(train_diff)
            + "); the result will differ from an uninterrupted run",
            RuntimeWarning, stacklevel=3)
    trainer.model.load_state_dict(ckpt["model"])
    if ckpt["optimizer"] is None:
        raise ValueError(f"cannot resume from {path}: it holds no optimizer state")
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["rng_state"] is not None:
        backend.set_rng_state(ckpt["rng_state"])
    extra = ckpt["extra"]
    trainer.epoch = ckpt["epoch"]
    trainer.history = list(extra.get("history", []))
    trainer.best_acc = float(extra.get("best_acc", -1.0))
    trainer.best_epoch = int(extra.get("best_epoch", 0))
    return trainer.epoch


def _read(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"cannot resume: {path} does not exist (no finished epoch was saved "
            "in this output folder); drop --resume to start a new run, or pass "
            "the --out folder of the run to continue")
    return load_checkpoint(path)


def _differences(saved: dict, current: dict) -> list[str]:
    """``["key: saved -> current", ...]`` for every key that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


def _constructor_defaults(cls) -> dict:
    """Default arguments of ``cls.__init__``: what a checkpoint written before
    an option existed was built with."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}
