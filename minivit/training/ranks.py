"""The per-rank work of a training step: which rows are mine, and how my part
of the batch becomes the whole batch's gradient, loss and evaluation.

The loop (:mod:`minivit.training.loop`) asks the same three questions of
every run and never asks how many processes there are:

=====================  ==================  =====================================
question               one process         rank r of N (``mpirun -n N``)
=====================  ==================  =====================================
``rows(b)``            ``(0, b)``          ``shard_bounds(b, r, N)``
``combine(...)``       as it is            g <- sum_r (n_r / b) g_r (allreduce
                                           of flat buckets); loss and hits summed
``evaluate(...)``      the whole test set  my shard, counts summed, predictions
                                           gathered in rank order
=====================  ==================  =====================================

Why the gradient weights are n_r / b: the averaged gradient in
:mod:`minivit.parallel`. :func:`for_world` picks the one that fits.
"""

from __future__ import annotations

import numpy as np

from minivit.metrics import Evaluation, evaluate
from minivit.parallel import distributed

__all__ = ["OneProcess", "Ranks", "for_world", "dropout_seed"]


class OneProcess:
    """A single process: every row is mine and my sums are the batch's."""

    buckets = None
    replica_processes = None     # Replicas decide: forked workers where they can

    def __init__(self, world):
        self.world = world

    def rows(self, b: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of a batch of ``b`` that this process computes."""
        return 0, b

    def combine(self, loss: float, hits: int, lo: int, hi: int, b: int) -> tuple[float, int]:
        """The whole batch's mean loss and hits, from this part's (rows lo..hi of b)."""
        return loss, hits

    def evaluate(self, model, x, y, batch_size: int, label_smoothing: float,
                 forward) -> Evaluation:
        """Accuracy, mean loss and predictions on ``(x, y)``."""
        return evaluate(model, x, y, batch_size, label_smoothing, forward)


class Ranks(OneProcess):
    """Rank ``world.rank`` of ``world.size``: a shard of every batch, and the
    collectives that make the shards one batch.

    At construction every rank checks that the others train the same thing
    (:func:`check_same`), takes rank 0's weights, and puts its gradients
    into flat buckets (``self.buckets``).
    """

    replica_processes = False    # replicas as threads: forking an MPI process is not safe

    def __init__(self, world, model, bucket_bytes: int = distributed.DEFAULT_BUCKET_BYTES):
        super().__init__(world)
        distributed.broadcast_parameters(model, world)
        self.buckets = distributed.GradientBuckets(model.parameters(), world, bucket_bytes)

    def rows(self, b: int) -> tuple[int, int]:
        return distributed.shard_bounds(b, self.world.rank, self.world.size)

    def combine(self, loss: float, hits: int, lo: int, hi: int, b: int) -> tuple[float, int]:
        # g <- sum_r (n_r / b) g_r: the gradient of the whole batch's mean loss
        self.buckets.allreduce_((hi - lo) / b)
        loss_total, hits_total = self.world.sum([loss * (hi - lo), hits])
        return float(loss_total) / b, int(hits_total)

    def evaluate(self, model, x, y, batch_size: int, label_smoothing: float,
                 forward) -> Evaluation:
        n = len(x)
        lo, hi = distributed.shard_bounds(n, self.world.rank, self.world.size)
        mine = (evaluate(model, x[lo:hi], y[lo:hi], batch_size, label_smoothing, forward)
                if hi > lo else None)
        loss_sum, hits = self.world.sum([mine.loss * (hi - lo) if mine else 0.0,
                                         int((mine.predictions == y[lo:hi]).sum())
                                         if mine else 0])
        predictions = self.world.allgather(mine.predictions if mine
                                           else np.zeros(0, np.int64))
        return Evaluation(accuracy=float(hits) / n, loss=float(loss_sum) / n,
                          predictions=np.concatenate(predictions))


def check_same(world, checkpoint_config: dict, train_data, test_data, batch_size: int) -> None:
    """Raise on every rank (``DistributedError``, ``all_ranks``) unless all
    ranks hold the same settings and data and the batch splits over them."""
    (x_train, y_train), (x_test, y_test) = train_data, test_data
    sample = slice(None, None, max(1, len(x_train) // 4096))
    distributed.check_same_everywhere(world, {
        **distributed.flatten(checkpoint_config),
        "training images": len(x_train),
        "test images": len(x_test),
        "training data digest": distributed.fingerprint(x_train[sample]),
        "training labels digest": distributed.fingerprint(y_train),
        "test labels digest": distributed.fingerprint(y_test),
    })
    if batch_size % world.size:
        lower = batch_size - batch_size % world.size
        err = distributed.DistributedError(
            f"the batch of {batch_size} images does not split over {world.size} "
            f"ranks: use a multiple of {world.size} (--batch-size {lower or world.size} "
            f"or {lower + world.size}) or a number of ranks that divides {batch_size}")
        err.all_ranks = True
        raise err


def for_world(world, model, checkpoint_config: dict, train_data, test_data, batch_size: int,
              bucket_bytes: int = distributed.DEFAULT_BUCKET_BYTES) -> OneProcess:
    """The per-rank work for ``world``: :class:`OneProcess` or :class:`Ranks`."""
    if not world.distributed:
        return OneProcess(world)
    check_same(world, checkpoint_config, train_data, test_data, batch_size)
    return Ranks(world, model, bucket_bytes)


def dropout_seed(seed: int, rank: int) -> int:
    """The dropout seed of a rank: ``seed`` itself on rank 0 (as in one
    process), an independent stream on every other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
