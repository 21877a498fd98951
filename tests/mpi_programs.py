"""Small programs that tests/test_distributed.py runs under ``mpirun``.

    python tests/mpi_programs.py train OUT [--single] [--dtype float64] [--optimizer sgd]
                                           [--epochs E] [--stop-after K] [--resume]
    python tests/mpi_programs.py raise            # rank 1 fails while rank 0 waits
    python tests/mpi_programs.py hang --timeout 2 # rank 1 never arrives
    python tests/mpi_programs.py kill             # rank 1 is killed (SIGKILL)

``train`` fits a tiny ViT on synthetic data (with augmentation and a last
batch that does not split evenly) and writes, from every rank,
``OUT/rank<r>.json`` with what that rank saw; rank 0 writes the checkpoints.
``--single`` trains in this one process without MPI (the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minivit import backend  # noqa: E402
from minivit.parallel import distributed  # noqa: E402
from minivit.config import TrainConfig  # noqa: E402
from minivit.train import Trainer  # noqa: E402
from minivit.vit import ViT  # noqa: E402

# 1001 training images in batches of 64: the last batch has 41, split 21/20.
TRAIN_IMAGES, TEST_IMAGES, BATCH = 1001, 203, 64


def synthetic_data(dtype):
    """Images whose class is which quadrant is brightest: learnable in one epoch."""
    rng = np.random.default_rng(123)
    x = rng.normal(size=(TRAIN_IMAGES + TEST_IMAGES, 1, 12, 12))
    y = rng.integers(0, 4, size=len(x))
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, 6 * r:6 * r + 6, 6 * c:6 * c + 6] += 1.5
    x = x.astype(dtype)
    return (x[:TRAIN_IMAGES], y[:TRAIN_IMAGES]), (x[TRAIN_IMAGES:], y[TRAIN_IMAGES:])


def train(args) -> None:
    world = (distributed.SINGLE_PROCESS if args.single
             else distributed.init(require=True, timeout=60))
    with world.abort_on_error(), backend.using(dtype=args.dtype):
        train_data, test_data = synthetic_data(args.dtype)
        model = ViT(image_size=12, patch_size=4, in_channels=1, num_classes=4, dim=16,
                    depth=2, heads=2, mlp_dim=32, pool="mean", seed=0)
        config = TrainConfig(epochs=args.epochs, batch_size=BATCH, lr=args.lr,
                             optimizer=args.optimizer, label_smoothing=0.1, clip_grad=1.0,
                             augment=True, max_shift=1, max_rotate=10.0, seed=0,
                             eval_batch_size=50)
        trainer = Trainer(model, train_data, test_data, config, out_dir=args.out,
                          quiet=True, plots=args.plots, world=world,
                          bucket_bytes=args.bucket_bytes)
        if args.resume:
            trainer.resume()
        trainer.fit(stop_after=args.stop_after)
        with open(os.path.join(args.out, f"rank{world.rank}.json"), "w") as f:
            json.dump({"size": world.size, "history": trainer.history,
                       "buckets": 0 if trainer.buckets is None else len(trainer.buckets.buffers),
                       "predictions": trainer.last_eval.predictions.tolist()}, f)


def fail(args) -> None:
    world = distributed.init(require=True, timeout=args.timeout)
    with world.abort_on_error():
        if world.rank == 1:
            if args.program == "raise":
                raise RuntimeError("rank 1 failed on purpose")
            if args.program == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)                     # "hang": never reaches the allreduce
        world.allreduce_(np.ones(4))
        print("allreduce finished", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("program", choices=("train", "raise", "hang", "kill"))
    p.add_argument("out", nargs="?")
    p.add_argument("--single", action="store_true")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--plots", action="store_true")
    p.add_argument("--bucket-bytes", type=int, default=distributed.DEFAULT_BUCKET_BYTES)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    train(args) if args.program == "train" else fail(args)


if __name__ == "__main__":
    main()
