"""The training command line: ``python examples/train_mnist.py [options]``.

Options start from a named recipe (:data:`minivit.config.PRESETS`: ``mnist``
by default, ``cifar10`` for CIFAR-10, ``mnist-long`` for the longer MNIST
recipe); every flag given overrides one value of it. :func:`main` loads the
data, builds the model and the :class:`~minivit.training.Trainer`, and trains.

==============  ==============================================================
file            what it holds
==============  ==============================================================
options.py      the flags, their help, and their defaults (the recipes)
inputs.py       the data and the model the options ask for
__init__.py     ``main`` (one run, on every MPI rank) and ``run`` (for scripts)
==============  ==============================================================
"""

from __future__ import annotations

import os
import sys
import time

from minivit import backend
from minivit.cli.inputs import (
    build_model,
    load_data,
    model_kwargs,
    pretrained_photo_transform,
    resize_images,
)
from minivit.cli.options import build_parser, parse_args
from minivit.config import TrainConfig
from minivit.data import DataError
from minivit.exercises import use_exercises
from minivit.parallel import distributed
from minivit.pretrained import WeightsError
from minivit.reporting import format_duration
from minivit.training import NonFiniteLossError, Trainer

__all__ = ["build_parser", "parse_args", "model_kwargs", "build_model", "load_data", "main",
           "run", "resize_images", "pretrained_photo_transform"]


def main(argv=None) -> Trainer:
    """Parse ``argv`` (default sys.argv[1:]), train, and return the Trainer
    (``trainer.history``, ``trainer.best_acc``, ``trainer.out_dir``, ...).

    Under ``mpirun -n N`` (or with ``--distributed``) every rank runs this;
    they train one model data-parallel and rank 0 alone prints and writes.
    """
    args = parse_args(argv)
    t_start = time.perf_counter()
    world = distributed.init(require=args.distributed,
                             timeout=args.collective_timeout or None)
    with world.abort_on_error():
        return _train(args, world, t_start)


def _train(args, world, t_start) -> Trainer:
    say = (lambda *a: None) if args.quiet or not world.is_main else print
    out = args.out or os.path.join("runs", args.dataset)

    # Everything below builds arrays in args.dtype; ``using`` restores the
    # previous default (and the rng) afterwards, so main() can be called
    # from tests without side effects.
    with backend.using(dtype=args.dtype):
        if world.is_main:               # rank 0 downloads what is missing, then the rest read
            train, test, names, mean, std, evaluated_on = load_data(args)
            world.barrier(watched=False)
        else:
            world.barrier(watched=False)
            train, test, names, mean, std, evaluated_on = load_data(args, quiet=True)
        model, train, test = build_model(args, train, test, names, say)
        use_exercises(model, args.use_exercise, say)
        x_train = train[0]
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            min_lr=args.min_lr, warmup_epochs=args.warmup,
            weight_decay=args.weight_decay, optimizer=args.optimizer,
            momentum=args.momentum, label_smoothing=args.label_smoothing,
            clip_grad=args.clip_grad if args.clip_grad > 0 else None,
            augment=args.augment, max_shift=args.max_shift,
            max_rotate=args.max_rotate, seed=args.seed,
            backbone_lr_scale=0.0 if args.freeze_backbone else args.backbone_lr_scale)
        trainer = Trainer(model, train, test, config, out_dir=out, dataset=args.dataset,
                          mean=mean, std=std, class_names=names, quiet=args.quiet,
                          tensorboard=args.tensorboard, world=world)

        if world.distributed:
            say(f"data parallel over {world.size} MPI ranks: {config.batch_size // world.size} "
                f"images per rank per step, {trainer.buckets.nbytes / 2**20:.2f} MB of "
                f"gradients in {len(trainer.buckets.buffers)} bucket(s) reduced per step")
        say(f"backend {backend.name} ({args.dtype}); dataset {args.dataset} "
            f"(preset {args.preset}): {len(x_train)} train images, {len(test[0])} "
            f"evaluated ({evaluated_on})")
        mc = model.config
        say(f"model: ViT {mc['image_size']}px, patch {mc['patch_size']}, dim {mc['dim']}, "
            f"depth {mc['depth']}, heads {mc['heads']}, mlp {mc['mlp_dim']}: "
            f"{model.num_parameters():,} parameters"
            + (f", from {args.weights}" if args.weights else "")
            + (", backbone frozen" if config.backbone_lr_scale == 0 else
               f", backbone lr x {config.backbone_lr_scale:g}"
               if config.backbone_lr_scale != 1 else ""))
        say(f"training: {config.epochs} epochs x {trainer.steps_per_epoch} steps, "
            f"{config.optimizer} lr {config.lr:g}, batch {config.batch_size}, "
            f"augment {'on' if config.augment else 'off'}, "
            f"label smoothing {config.label_smoothing:g}")
        if args.resume:
            done = trainer.resume()
            say(f"resumed from {trainer.last_path}: {done} epoch(s) done, "
                f"best {100 * max(trainer.best_acc, 0):.2f}%")
        try:
            trainer.fit(stop_after=args.stop_after)
        finally:
            if trainer.tensorboard is not None:
                trainer.tensorboard.close()

    if not world.is_main:
        return trainer
    if trainer.history:
        final = trainer.history[-1]["test_acc"]
        print(f"final test accuracy {100 * final:.2f}%, best "
              f"{100 * trainer.best_acc:.2f}% (epoch {trainer.best_epoch}); "
              f"total time {format_duration(time.perf_counter() - t_start)}")
    print(f"outputs in {os.path.abspath(out)}: last.npz, best.npz, metrics.jsonl, "
          "curves.png, confusion_matrix.png"
          + (f"; TensorBoard: tensorboard --logdir {args.tensorboard}"
             if args.tensorboard else ""))
    return trainer


def run(argv=None) -> int:
    """:func:`main` for a script: errors become one clear line and an exit code."""
    try:
        main(argv)
    except (NonFiniteLossError, DataError, FileNotFoundError, ImportError, WeightsError,
            distributed.DistributedError) as exc:
        # On several ranks only errors raised by all of them get here (any
        # other aborts the job): rank 0 speaks for everyone.
        if distributed.current().is_main:
            print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run again with --resume to continue from the last "
              "finished epoch (last.npz)", file=sys.stderr)
        return 130
    return 0
