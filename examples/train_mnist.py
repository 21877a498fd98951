"""Train a small Vision Transformer on MNIST (or Fashion-MNIST) from scratch.

    python examples/train_mnist.py                      # defaults (see below)
    python examples/train_mnist.py --epochs 2 --train-subset 6000   # quick look
    python examples/train_mnist.py --resume             # continue runs/mnist
    MINIVIT_BACKEND=cupy python examples/train_mnist.py # on an NVIDIA GPU

Outputs go to ``--out`` (default ``runs/<dataset>``): ``last.npz`` and
``best.npz`` checkpoints, ``metrics.jsonl`` (one line per epoch),
``curves.png`` and ``confusion_matrix.png``.

The defaults are the quick recipe: a 6-block, 64-wide ViT on 7x7 patches
(16 tokens + CLS, ~206k parameters), AdamW at lr 2e-3 with weight decay 0.05,
1 epoch of warm-up then cosine decay, light augmentation (shifts of up to 2
pixels, rotations up to 10 degrees), 12 epochs.

Measured on a 2-core CPU with NumPy: the defaults reach 98.82% test accuracy
in 4 min 14 s. The longer recipe (49 tokens of 4x4 patches, 30 epochs, label
smoothing) reached 99.46% in 33 minutes::

    python examples/train_mnist.py --patch-size 4 --epochs 30 \\
        --label-smoothing 0.1 --out runs/mnist-long
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from minivit import backend
from minivit.data import DataError, get_dataset_info, load_dataset, normalize
from minivit.train import NonFiniteLossError, TrainConfig, Trainer, format_duration
from minivit.vit import POOLS, POS_EMBEDS, ViT


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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
        description="Train a from-scratch NumPy/CuPy Vision Transformer on MNIST.",
        formatter_class=_HelpFormatter)

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
                   help="which dataset")
    g.add_argument("--data-dir", default=None,
                   help="folder with the four IDX files (default: $MINIVIT_DATA, "
                        "else ~/.cache/minivit/<dataset>, downloaded when missing)")
    g.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    g.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random shifts and rotations of the training images")
    g.add_argument("--max-shift", type=int, default=2, help="largest shift (pixels)")
    g.add_argument("--max-rotate", type=float, default=10.0,
                   help="largest rotation (degrees)")

    g = p.add_argument_group("model")
    g.add_argument("--patch-size", type=positive_int, default=7,
                   help="side of the square patches (must divide 28)")
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
    g.add_argument("--stop-after", type=positive_int, default=None, metavar="K",
                   help="stop once K epochs are done (the schedule still spans "
                        "--epochs); continue later with --resume")
    g.add_argument("--resume", action="store_true",
                   help="continue from <out>/last.npz (use the same flags as the "
                        "first run)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress or per-epoch lines, only the final result")
    return p


def main(argv=None) -> Trainer:
    """Parse ``argv`` (default sys.argv[1:]), train, and return the Trainer
    (``trainer.history``, ``trainer.best_acc``, ``trainer.out_dir``, ...)."""
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    out = args.out or os.path.join("runs", args.dataset)
    info = get_dataset_info(args.dataset)

    # Everything below builds arrays in args.dtype; ``using`` restores the
    # previous default (and the rng) afterwards, so main() can be called
    # from tests without side effects.
    with backend.using(dtype=args.dtype):
        x_train, y_train, x_test, y_test = load_dataset(
            info, args.data_dir, quiet=args.quiet)
        if args.train_subset:
            x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
        if args.test_subset:
            x_test, y_test = x_test[:args.test_subset], y_test[:args.test_subset]
        # Host float arrays, normalised once; batches move to the device later.
        x_train = normalize(x_train, info.mean, info.std, dtype=args.dtype)
        x_test = normalize(x_test, info.mean, info.std, dtype=args.dtype)

        model = ViT(image_size=x_train.shape[-1], patch_size=args.patch_size,
                    in_channels=x_train.shape[1], num_classes=len(info.class_names),
                    dim=args.dim, depth=args.depth, heads=args.heads,
                    mlp_dim=args.mlp_dim, dropout=args.dropout,
                    attn_dropout=args.attn_dropout, pool=args.pool,
                    pos_embed=args.pos_embed, seed=args.seed)
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            min_lr=args.min_lr, warmup_epochs=args.warmup,
            weight_decay=args.weight_decay, optimizer=args.optimizer,
            momentum=args.momentum, label_smoothing=args.label_smoothing,
            clip_grad=args.clip_grad if args.clip_grad > 0 else None,
            augment=args.augment, max_shift=args.max_shift,
            max_rotate=args.max_rotate, seed=args.seed)
        trainer = Trainer(model, (x_train, y_train), (x_test, y_test), config,
                          out_dir=out, dataset=info.name, mean=info.mean, std=info.std,
                          class_names=info.class_names, quiet=args.quiet)

        say(f"backend {backend.name} ({args.dtype}); dataset {info.name}: "
            f"{len(x_train)} train / {len(x_test)} test images")
        say(f"model: ViT patch {args.patch_size}, dim {args.dim}, depth {args.depth}, "
            f"heads {args.heads}, mlp {args.mlp_dim}: "
            f"{model.num_parameters():,} parameters")
        say(f"training: {config.epochs} epochs x {trainer.steps_per_epoch} steps, "
            f"{config.optimizer} lr {config.lr:g}, batch {config.batch_size}, "
            f"augment {'on' if config.augment else 'off'}")
        if args.resume:
            done = trainer.resume()
            say(f"resumed from {trainer.last_path}: {done} epoch(s) done, "
                f"best {100 * max(trainer.best_acc, 0):.2f}%")
        trainer.fit(stop_after=args.stop_after)

    if trainer.history:
        final = trainer.history[-1]["test_acc"]
        print(f"final test accuracy {100 * final:.2f}%, best "
              f"{100 * trainer.best_acc:.2f}% (epoch {trainer.best_epoch}); "
              f"total time {format_duration(time.perf_counter() - t_start)}")
    print(f"outputs in {os.path.abspath(out)}: last.npz, best.npz, metrics.jsonl, "
          "curves.png, confusion_matrix.png")
    return trainer


if __name__ == "__main__":
    try:
        main()
    except (NonFiniteLossError, DataError, FileNotFoundError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted; run again with --resume to continue from the last "
              "finished epoch (last.npz)", file=sys.stderr)
        sys.exit(130)
