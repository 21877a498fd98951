"""Train a small Vision Transformer on MNIST (or Fashion-MNIST, CIFAR-10, your images).

    python examples/train_mnist.py                      # the default recipe (preset mnist)
    python examples/train_mnist.py --epochs 2 --train-subset 6000   # quick look
    python examples/train_mnist.py --preset mnist-long  # the longer, more accurate recipe
    python examples/train_mnist.py --dataset fashion-mnist
    python examples/train_mnist.py --dataset cifar10    # preset cifar10: 4x4 patches, RGB
    python examples/train_mnist.py --dataset imagefolder --data-dir photos/ --image-size 64
    python examples/train_mnist.py --resume             # continue runs/mnist
    MINIVIT_BACKEND=cupy python examples/train_mnist.py # on an NVIDIA GPU

Outputs go to ``--out`` (default ``runs/<dataset>``): ``last.npz`` and
``best.npz`` checkpoints, ``metrics.jsonl`` (one line per epoch),
``curves.png`` and ``confusion_matrix.png``; with ``--tensorboard DIR`` also
TensorBoard event files. ``--help`` lists every option.

The recipes live in ``minivit/config.py`` (``PRESETS``), the command line in
``minivit/cli/``, the training loop in ``minivit/training/loop.py``.
"""

import sys

from minivit.cli import build_parser, main, model_kwargs, parse_args, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run())
