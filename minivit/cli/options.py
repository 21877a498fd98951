"""The options of ``examples/train_mnist.py``: what each flag means, and where
its default comes from.

Every training and model option takes its default from a named recipe,
:data:`minivit.config.PRESETS` (``mnist`` unless ``--preset`` or
``--dataset cifar10`` says otherwise), and from nowhere else: the
``add_argument`` calls below declare none. :func:`parse_args` reads the
command line twice: the first pass finds the recipe, whose values become the
defaults of the second, so explicit flags win. The only defaults declared
here are those a recipe cannot hold: ``--dataset`` (it picks the recipe) and
``--collective-timeout`` (:data:`minivit.parallel.mpi.DEFAULT_TIMEOUT_S`).
"""

from __future__ import annotations

import argparse

from minivit import backend
from minivit.config import OPTIMIZERS, PRESETS, preset_for
from minivit.data import DATASETS
from minivit.parallel import distributed
from minivit.vit import POOLS, POS_EMBEDS

__all__ = ["build_parser", "parse_args", "positive_int", "floats", "IMAGE_FOLDER",
           "DATASET_CHOICES"]

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


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a from-scratch NumPy/CuPy Vision Transformer on MNIST, "
                    "Fashion-MNIST, CIFAR-10 or a folder of your own images.",
        formatter_class=_HelpFormatter, add_help=add_help)
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
    g.add_argument("--channels", type=int, choices=(1, 3),
                   help="imagefolder: 1 = greyscale, 3 = RGB")
    g.add_argument("--mean", type=floats, default=None,
                   help="imagefolder: normalisation mean on the [0, 1] scale, one value "
                        "or one per channel (default: measured on the training images; "
                        "for a timm model, its own)")
    g.add_argument("--std", type=floats, default=None,
                   help="imagefolder: normalisation std, like --mean")
    g.add_argument("--test-fraction", type=float,
                   help="imagefolder without train/ and test/: share of each class held "
                        "out for testing")
    g.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    g.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only")
    g.add_argument("--val-split", type=positive_int, default=None, metavar="N",
                   help="hold the last N training images out and evaluate on them "
                        "instead of the test set (for tuning without touching the test set)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random shifts and rotations of the training images")
    g.add_argument("--max-shift", type=int, help="largest shift (pixels)")
    g.add_argument("--max-rotate", type=float,
                   help="largest rotation (degrees)")

    g = p.add_argument_group("model")
    g.add_argument("--patch-size", type=positive_int,
                   help="side of the square patches (must divide the image size)")
    g.add_argument("--dim", type=positive_int, help="token width")
    g.add_argument("--depth", type=positive_int, help="transformer blocks")
    g.add_argument("--heads", type=positive_int,
                   help="attention heads (must divide --dim)")
    g.add_argument("--mlp-dim", type=positive_int,
                   help="hidden width of each block's MLP")
    g.add_argument("--dropout", type=float,
                   help="dropout on embeddings, projections and MLPs")
    g.add_argument("--attn-dropout", type=float,
                   help="dropout on the attention weights")
    g.add_argument("--pool", choices=POOLS,
                   help="classify from the CLS token or the mean of the patch tokens")
    g.add_argument("--pos-embed", choices=POS_EMBEDS,
                   help="learned or fixed 2-D sine-cosine position embedding")
    g.add_argument("--dtype", choices=backend.VALID_DTYPES,
                   help="float type of weights and activations")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int,
                   help="passes over the training set (fixes the lr schedule)")
    g.add_argument("--batch-size", type=positive_int,
                   help="images per optimizer step")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="AdamW (decoupled decay) or SGD with momentum")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float,
                   help="learning rate at the end of the cosine")
    g.add_argument("--warmup", type=float,
                   help="linear warm-up length in epochs (may be fractional)")
    g.add_argument("--weight-decay", type=float,
                   help="decay of the weight matrices (not biases, norms, tokens)")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--label-smoothing", type=float,
                   help="cross-entropy target smoothing, in [0, 1)")
    g.add_argument("--clip-grad", type=float,
                   help="max global gradient norm; 0 disables clipping")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int,
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
    g.add_argument("--backbone-lr-scale", type=float, metavar="S",
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
    p.set_defaults(**PRESETS["mnist"])      # the defaults: the recipes, nowhere else
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse in two passes: the first finds the preset, whose values become the
    defaults of the second, so explicit flags win (and ``--help``, answered
    by the second, shows the recipe that applies)."""
    first, _ = build_parser(add_help=False).parse_known_args(argv)
    parser = build_parser()
    name = first.preset or preset_for(first.dataset)
    parser.set_defaults(**PRESETS[name], preset=name)
    return parser.parse_args(argv)
