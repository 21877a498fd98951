"""The training command line: ``python examples/train_mnist.py [options]``.

Options start from a named recipe (:data:`minivit.config.PRESETS`: ``mnist``
by default, ``cifar10`` for CIFAR-10, ``mnist-long`` for the longer MNIST
recipe); every flag given overrides one value of it. :func:`main` loads the
data, builds the model and the :class:`~minivit.train.Trainer`, and trains.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from minivit import backend, distributed, viz
from minivit.config import PRESETS, TrainConfig, preset_for
from minivit.data import (
    DATASETS,
    DataError,
    channel_stats,
    get_dataset_info,
    load_dataset,
    load_image_folder,
    normalize,
)
from minivit.exercises import use_exercises
from minivit.pretrained import PRESETS as PRESETS_TIMM
from minivit.pretrained import EvalTransform, WeightsError, create_model, load_pretrained
from minivit.pretrained.formats import file_config
from minivit.pretrained.preprocess import is_timm_photo_model
from minivit.reporting import format_duration
from minivit.train import NonFiniteLossError, Trainer
from minivit.vit import POOLS, POS_EMBEDS, ViT

__all__ = ["build_parser", "parse_args", "model_kwargs", "build_model", "load_data", "main",
           "run"]

IMAGE_FOLDER = "imagefolder"
DATASET_CHOICES = (*DATASETS, IMAGE_FOLDER)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def floats(text: str) -> tuple[float, ...]:
    """``"0.5"`` or ``"0.49,0.48,0.45"`` -> a tuple of floats (one per channel)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers (one per channel), got {text!r}"
        ) from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" only where there is a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text or action.default is None \
                or action.default is False:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a from-scratch NumPy/CuPy Vision Transformer on MNIST, "
                    "Fashion-MNIST, CIFAR-10 or a folder of your own images.",
        formatter_class=_HelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="the recipe the other options start from (default: cifar10 for "
                        "--dataset cifar10, mnist otherwise); flags override its values")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASET_CHOICES, default="mnist",
                   help="which dataset; 'imagefolder' reads --data-dir/<class>/* "
                        "(or --data-dir/train/<class>/* and --data-dir/test/<class>/*)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the dataset's files (default: $MINIVIT_DATA, a "
                        "system folder, else ~/.cache/minivit/<dataset>, downloaded when "
                        "missing); for imagefolder, the folder of class subfolders")
    g.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                   help="resize every image to N x N (imagefolder; or any dataset, e.g. 32 or "
                        "224 for pretrained models with 16-px patches)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="imagefolder: 1 = greyscale, 3 = RGB")
    g.add_argument("--mean", type=floats, default=None,
                   help="imagefolder: normalisation mean on the [0, 1] scale, one value "
                        "or one per channel (default: measured on the training images; "
                        "for a timm model, its own)")
    g.add_argument("--std", type=floats, default=None,
                   help="imagefolder: normalisation std, like --mean")
    g.add_argument("--test-fraction", type=float, default=0.1,
                   help="imagefolder without train/ and test/: share of each class held "
                        "out for testing")
    g.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    g.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only")
    g.add_argument("--val-split", type=positive_int, default=None, metavar="N",
                   help="hold the last N training images out and evaluate on them "
                        "instead of the test set (for tuning without touching the test set)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random shifts and rotations of the training images")
    g.add_argument("--max-shift", type=int, default=2, help="largest shift (pixels)")
    g.add_argument("--max-rotate", type=float, default=10.0,
                   help="largest rotation (degrees)")

    g = p.add_argument_group("model")
    g.add_argument("--patch-size", type=positive_int, default=7,
                   help="side of the square patches (must divide the image size)")
    g.add_argument("--dim", type=positive_int, default=64, help="token width")
    g.add_argument("--depth", type=positive_int, default=6, help="transformer blocks")
    g.add_argument("--heads", type=positive_int, default=4,
                   help="attention heads (must divide --dim)")
    g.add_argument("--mlp-dim", type=positive_int, default=128,
                   help="hidden width of each block's MLP")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="dropout on embeddings, projections and MLPs")
    g.add_argument("--attn-dropout", type=float, default=0.0,
                   help="dropout on the attention weights")
    g.add_argument("--pool", choices=POOLS, default="cls",
                   help="classify from the CLS token or the mean of the patch tokens")
    g.add_argument("--pos-embed", choices=POS_EMBEDS, default="learned",
                   help="learned or fixed 2-D sine-cosine position embedding")
    g.add_argument("--dtype", choices=backend.VALID_DTYPES, default="float32",
                   help="float type of weights and activations")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=12,
                   help="passes over the training set (fixes the lr schedule)")
    g.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per optimizer step")
    g.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="AdamW (decoupled decay) or SGD with momentum")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=1e-5,
                   help="learning rate at the end of the cosine")
    g.add_argument("--warmup", type=float, default=1.0,
                   help="linear warm-up length in epochs (may be fractional)")
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="decay of the weight matrices (not biases, norms, tokens)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy target smoothing, in [0, 1)")
    g.add_argument("--clip-grad", type=float, default=1.0,
                   help="max global gradient norm; 0 disables clipping")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation, shuffling, augmentation, dropout")
    g.add_argument("--out", default=None, help="output folder (default runs/<dataset>)")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard event files (scalars, attention maps) to "
                        "DIR; needs the [tensorboard] extra")
    g.add_argument("--stop-after", type=positive_int, default=None, metavar="K",
                   help="stop once K epochs are done (the schedule still spans "
                        "--epochs); continue later with --resume")
    g.add_argument("--resume", action="store_true",
                   help="continue from <out>/last.npz (use the same flags as the "
                        "first run)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress or per-epoch lines, only the final result")
    g.add_argument("--use-exercise", action="append", default=None, metavar="NAME=FILE",
                   help="run your own backward from `python -m minivit.exercises` in the "
                        "model, e.g. layernorm=minivit_exercises/layernorm.py (repeatable)")

    g = p.add_argument_group("pretrained weights (fine-tuning; see examples/finetune.py)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="start from these weights (.safetensors, Google .npz, minivit .npz, "
                        ".pth): the architecture comes from the file or --model, the head "
                        "is replaced when the class count differs, the position embedding "
                        "resampled to the image size; the model flags above are ignored")
    g.add_argument("--model", default=None, metavar="PRESET",
                   help="a timm architecture (vit_tiny_patch16_224, vit_small_patch16_224, "
                        "vit_base_patch16_224, vit_base_patch32_224, vit_large_patch16_224) "
                        "for --weights, or to train from scratch")
    g.add_argument("--num-classes", type=positive_int, default=None, metavar="K",
                   help="classes of the head (default: the dataset's)")
    g.add_argument("--backbone-lr-scale", type=float, default=1.0, metavar="S",
                   help="learning rate of everything but the head = lr x S (e.g. 0.1)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train the head only (same as --backbone-lr-scale 0)")

    g = p.add_argument_group("several processes (MPI; launch with mpirun -n N or srun)")
    g.add_argument("--distributed", action="store_true",
                   help="use MPI even when not started by a launcher (otherwise detected "
                        "from mpirun/srun); needs the [mpi] extra")
    g.add_argument("--collective-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                   metavar="SECONDS",
                   help="abort all ranks when one waits this long for the others "
                        "(a rank died or hangs); 0 waits forever")
    p.set_defaults(**PRESETS["mnist"])
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse in two passes: the first finds the preset, whose values become the
    defaults of the second, so explicit flags win."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    name = first.preset or preset_for(first.dataset)
    parser.set_defaults(**PRESETS[name], preset=name)
    return parser.parse_args(argv)


def model_kwargs(args, image_size: int, in_channels: int, num_classes: int) -> dict:
    """The ViT's constructor arguments from the parsed options."""
    return dict(image_size=image_size, patch_size=args.patch_size, in_channels=in_channels,
                num_classes=num_classes, dim=args.dim, depth=args.depth, heads=args.heads,
                mlp_dim=args.mlp_dim, dropout=args.dropout, attn_dropout=args.attn_dropout,
                pool=args.pool, pos_embed=args.pos_embed, seed=args.seed)


def resize_images(images, size: int, chunk: int = 2048):
    """Bilinear resize of raw uint8 images (N, [C,] H, W) to size x size, uint8."""
    out = np.empty((*images.shape[:-2], size, size), dtype=np.uint8)
    for start in range(0, len(images), chunk):          # bounded float64 temporaries
        resized = viz.upsample(images[start:start + chunk], size, mode="bilinear")
        out[start:start + chunk] = np.clip(np.rint(resized), 0, 255)
    return out


def build_model(args, train, test, names, say=print):
    """The ViT the options ask for: from ``--weights`` (head and position
    embedding adapted), a ``--model`` preset, or the model flags. Grayscale
    data given to a 3-channel model is repeated over the channels.

    Returns:
        (model, train, test), the data possibly with repeated channels.
    """
    x_train = train[0]
    size, channels = x_train.shape[-1], x_train.shape[1]
    classes = args.num_classes or len(names)
    if classes < len(names):
        raise DataError(f"--num-classes {classes} is fewer than the dataset's "
                        f"{len(names)} classes")
    if not (args.weights or args.model):
        return ViT(**model_kwargs(args, size, channels, classes)), train, test
    try:
        if args.weights:
            model = load_pretrained(args.weights, preset=args.model, num_classes=classes,
                                    image_size=size, log=say).train()
        else:
            model = create_model(args.model, num_classes=classes, image_size=size,
                                 in_channels=channels, seed=args.seed)
    except WeightsError:
        raise
    except ValueError as exc:       # e.g. 28-px images and 16-px patches
        raise DataError(f"{exc}. The images are {size} px: resize them with --image-size "
                        "(e.g. 32 or 224 for 16-px patches)") from None
    wanted = model.config["in_channels"]
    if wanted != channels:
        if channels != 1:
            raise DataError(f"the model takes {wanted}-channel images, the data has "
                            f"{channels} channels")
        say(f"grayscale images repeated over the model's {wanted} channels")
        train = (train[0].repeat(wanted, axis=1), train[1])
        test = (test[0].repeat(wanted, axis=1), test[1])
    return model, train, test


def pretrained_photo_transform(args) -> EvalTransform | None:
    """timm's evaluation transform, for an RGB image folder and a timm model
    (``--model``, or ``--weights`` of a timm architecture: see
    :func:`~minivit.pretrained.preprocess.is_timm_photo_model`), at
    ``--image-size`` or the preset's size; None otherwise. Both splits are
    prepared with it, as examples/predict.py prepares photos for the model."""
    if args.dataset != IMAGE_FOLDER or args.channels != 3 or not (args.weights or args.model):
        return None
    preset = args.model if args.model in PRESETS_TIMM else None
    config = PRESETS_TIMM[preset] if preset else file_config(args.weights) if args.weights \
        else None
    if not is_timm_photo_model(config or {"in_channels": 3, "gelu": "exact"}):
        return None          # a from-scratch minivit checkpoint: read as it was trained
    size = args.image_size or (PRESETS_TIMM[preset]["image_size"] if preset else 224)
    return EvalTransform.for_preset(preset, size) if preset else EvalTransform(size)


def load_data(args, quiet: bool | None = None):
    """Load, subset and normalise the data the options ask for (``quiet``:
    no download messages; default ``args.quiet``).

    Returns:
        (x_train, y_train), (x_test, y_test) as host arrays (x float
        (N, C, H, W) normalised in ``args.dtype``), class names, mean, std,
        and a description of the evaluation set.
    """
    if args.dataset == IMAGE_FOLDER:
        if args.data_dir is None:
            raise DataError("--dataset imagefolder needs --data-dir: a folder with one "
                            "subfolder of images per class")
        photos = pretrained_photo_transform(args)
        if photos is not None and not (args.quiet if quiet is None else quiet):
            print(f"images prepared as timm's eval transform for a pretrained model: shorter "
                  f"side {photos.scale_size} ({photos.interpolation}), centre crop "
                  f"{photos.image_size}, mean {photos.mean}, std {photos.std}")
        folder = load_image_folder(args.data_dir, args.image_size, args.channels,
                                   args.test_fraction, args.seed,
                                   prepare=photos.resize_and_crop if photos else None)
        x_train, y_train, x_test, y_test = folder[:4]
        names, evaluated_on = folder.class_names, f"test images: {folder.test_source}"
        default = (photos.mean, photos.std) if photos else channel_stats(x_train)
        mean = args.mean if args.mean is not None else default[0]
        std = args.std if args.std is not None else default[1]
    else:
        info = get_dataset_info(args.dataset)
        x_train, y_train, x_test, y_test = load_dataset(
            info, args.data_dir, quiet=args.quiet if quiet is None else quiet)
        names, mean, std, evaluated_on = info.class_names, info.mean, info.std, "test set"
    if args.val_split:
        if args.val_split >= len(x_train):
            raise ValueError(f"--val-split {args.val_split} leaves no training images "
                             f"(there are {len(x_train)})")
        x_test, y_test = x_train[-args.val_split:], y_train[-args.val_split:]
        x_train, y_train = x_train[:-args.val_split], y_train[:-args.val_split]
        evaluated_on = f"validation split (last {args.val_split} training images)"
    if args.train_subset:
        x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
    if args.test_subset:
        x_test, y_test = x_test[:args.test_subset], y_test[:args.test_subset]
    if args.image_size and args.image_size != x_train.shape[-1]:     # after subsetting
        x_train, x_test = (resize_images(x, args.image_size) for x in (x_train, x_test))
    # Host float arrays, normalised once; batches move to the device later.
    x_train = normalize(x_train, mean, std, dtype=args.dtype)
    x_test = normalize(x_test, mean, std, dtype=args.dtype)
    return (x_train, y_train), (x_test, y_test), list(names), mean, std, evaluated_on


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
