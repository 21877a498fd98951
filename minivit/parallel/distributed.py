"""Data-parallel training over MPI: one model, N ranks, one averaged gradient.

Every rank holds a full copy of the model and trains on its own shard of
every global batch. One step, on every rank, in this order (why the weights
are n / B: the averaged gradient in ``minivit.parallel``)::

    global batch: rows [0, B) of the epoch's shuffle     same on every rank: (seed, epoch)
    my shard:     rows [lo, hi), n = hi - lo             shard_bounds(B, rank, size)
    forward + backward on the shard                      g = dL_shard/dW, L_shard = mean over n
    g *= n / B                                           weight by the shard's share of the batch
    Allreduce(SUM, g) over flat buckets                  sum_r (n_r / B) g_r = dL_batch/dW
    clip + optimizer.step()                              same g everywhere -> same weights

Gradients travel in a few large flat buffers (*buckets*), not one call per
parameter: every ``Parameter.grad`` is a view into a bucket (layers add
into ``.grad`` in place, so backward fills the buckets directly, with no
packing copy), and each bucket costs one ``Allreduce``. On the GPU the
buckets live on the device and are reduced by NCCL.

What stays on one rank: rank 0 alone writes checkpoints, logs and plots;
everything else (evaluation included) is split and its counts summed, so
every rank reports the same numbers.

The ranks themselves, their collectives and what happens on failure:
``minivit.parallel.mpi``, whose names this module also offers (one import
for the trainer: ``distributed.init``, ``distributed.World``, ...).
"""

from __future__ import annotations

import hashlib

import numpy as np

from minivit import backend
from minivit.parallel.mpi import (_SIZE_VARIABLES, DEFAULT_TIMEOUT_S,  # noqa: F401
                                  MPI_EXTRA_HINT, SINGLE_PROCESS, DistributedError, World,
                                  current, init, launcher_size)

__all__ = [
    "DistributedError",
    "World",
    "SINGLE_PROCESS",
    "MPI_EXTRA_HINT",
    "launcher_size",
    "init",
    "current",
    "shard_bounds",
    "GradientBuckets",
    "broadcast_parameters",
    "check_same_everywhere",
    "flatten",
    "fingerprint",
    "DEFAULT_BUCKET_BYTES",
    "DEFAULT_TIMEOUT_S",
]

# Buckets of 25 MiB, as PyTorch DDP: big enough that per-call latency is
# noise, small enough that a bucket could be sent while backward fills the next.
DEFAULT_BUCKET_BYTES = 25 * 2**20


# --------------------------------------------------------------------------
# Splitting the work
# --------------------------------------------------------------------------
def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that ``rank`` of ``size`` takes.

    Contiguous, as equal as possible: the first ``n % size`` ranks take one
    more row. A rank may get no rows (``n < size``).
    """
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------
class GradientBuckets:
    """Every trainable parameter's ``.grad`` as a view into a few flat buffers,
    and the allreduce that averages them over the ranks.

    Args:
        params: the model's parameters (``model.parameters()``), in order.
        world: the :class:`World`.
        bucket_bytes: largest bucket (a single larger parameter gets its own).

    After construction ``p.grad`` of every parameter with a gradient is a
    reshaped slice of ``buffers[k]``; layers keep adding into it in place.
    """

    def __init__(self, params, world: World, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        params = [p for p in params if p.grad is not None]
        if not params:
            raise ValueError("GradientBuckets: no parameter has a gradient")
        dtypes = {p.grad.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"GradientBuckets: parameters of several dtypes {sorted(map(str, dtypes))}")
        dtype = dtypes.pop()
        self.world = world
        self.buckets: list[list] = []
        size = 0
        for p in params:
            nbytes = p.grad.size * dtype.itemsize
            if not self.buckets or (size + nbytes > bucket_bytes and self.buckets[-1]):
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        xp = backend.xp
        self.buffers = []
        for bucket in self.buckets:
            buffer = xp.empty(sum(p.grad.size for p in bucket), dtype=dtype)
            offset = 0
            for p in bucket:
                view = buffer[offset:offset + p.grad.size].reshape(p.grad.shape)
                view[...] = p.grad
                p.grad = view
                offset += p.grad.size
            self.buffers.append(buffer)

    @property
    def nbytes(self) -> int:
        """Bytes each rank contributes per step."""
        return sum(int(b.nbytes) for b in self.buffers)

    def allreduce_(self, weight: float) -> None:
        """``g <- sum over ranks of weight_r * g_r``, for every gradient.

        ``weight`` is this rank's share of the global batch (``n / B``).
        """
        for buffer in self.buffers:
            buffer *= buffer.dtype.type(weight)
            self.world.allreduce_(buffer)


def broadcast_parameters(model, world: World, root: int = 0) -> None:
    """Make every rank's weights those of rank ``root`` (at start: a model
    built from another seed, or a rank that loaded other weights)."""
    if world.comm is None:
        return
    for _, p in model.named_parameters():
        world.broadcast_array_(p.data, root)


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (to name what differs)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fingerprint(array: np.ndarray) -> str:
    """A short digest of a host array (shape, dtype and bytes), to compare ranks' data."""
    h = hashlib.sha256(str((array.shape, array.dtype)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def check_same_everywhere(world: World, items: dict) -> None:
    """Raise on every rank if any rank's ``items`` differ from rank 0's.

    ``items`` maps a name to a JSON-able value (a setting, a data size, a
    digest). Detected by one ``allgather`` at start, so a rank started with
    other flags or other data fails with a message instead of a hang or a
    silently different model.
    """
    if world.comm is None:
        return
    everyone = world.allgather(items)
    reference = everyone[0]
    lines = []
    for rank, theirs in enumerate(everyone[1:], start=1):
        for key in sorted(set(reference) | set(theirs)):
            if reference.get(key) != theirs.get(key):
                lines.append(f"rank {rank} has {key} = {theirs.get(key, '<unset>')!r}, "
                             f"rank 0 has {reference.get(key, '<unset>')!r}")
    if lines:
        err = DistributedError(
            "the ranks were started with different settings or data: " + "; ".join(lines)
            + ". Start every rank with the same command line, data and package version.")
        err.all_ranks = True
        raise err
