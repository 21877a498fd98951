"""Data parallelism over the cores of one machine: one model replica per thread.

A batch of B images is cut into one slice per thread; each thread runs the
forward and backward of its own replica on its slice, single-threaded, and
the replicas' gradients are added into the model's. With loss_r the mean
loss over slice r (n_r images), the gradient of the whole batch's mean loss is

    dL/dw = sum_r (n_r / B) dloss_r/dw,

so each replica scales its dlogits by n_r / B before its backward, and the
sum is the plain sum of the replicas' ``.grad`` (as the MPI ranks of
``minivit.distributed`` do across processes, here within one).

Why: at the sizes minivit trains (rows of 64-768 values), most operations
are too small to split across threads, so while one core runs them the
other idles; and BLAS's worker threads spin between calls, taking cores
from our own. A replica per core keeps every core busy with whole layers.

Replicas share the model's parameter arrays (``.data``, never copied, so an
optimizer step or a loaded checkpoint is seen by all); each has its own
``.grad``, its own forward caches and, for dropout, its own random generator
drawn from the process's (``backend.device_rng``), so a seed still fixes
every mask. Replica 0 is the model itself. Slices are contiguous and in
order, so the logits come back in the batch's order.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

from minivit import backend, ops
from minivit.module import is_grad_enabled, set_grad_enabled

__all__ = ["Replicas"]

# A slice smaller than this runs no faster on its own core than with the
# rest of the batch: below 2 x this many images the batch is not cut.
MIN_IMAGES_PER_REPLICA = 4


class Replicas:
    """Run ``model`` on a batch as ``threads`` replicas, one slice each.

    ``threads`` defaults to ``minivit.ops.num_threads()``
    (``MINIVIT_NUM_THREADS``, else the cores this process may use). With one
    thread, on the GPU backend, or for a batch too small to cut, the model
    runs alone, exactly as ``model.forward`` / ``model.backward``. Not a
    layer: it has no forward/backward pair of its own, only ``logits`` (an
    evaluation) and ``forward_backward`` (a training step's two passes).
    """

    def __init__(self, model, threads: int | None = None):
        self.model = model
        self.threads = ops.num_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"Replicas needs threads >= 1, got {threads}")
        self._replicas = [model]              # the others are made on first use
        self._pool = None

    def slices(self, batch: int) -> list[tuple[int, int]]:
        """The (start, stop) rows each replica takes of a batch of ``batch``."""
        k = min(self.threads, batch // MIN_IMAGES_PER_REPLICA)
        if backend.name != "numpy" or k < 2:
            return [(0, batch)]
        return [(batch * r // k, batch * (r + 1) // k) for r in range(k)]

    def logits(self, x):
        """Logits of ``x`` (B, C, H, W) -> (B, classes), as ``model.forward``
        (forward only: a backward goes through ``forward_backward``). Under
        ``no_grad`` the replicas keep nothing for backward either."""
        xp = backend.xp
        parts = self.slices(len(x))
        if len(parts) == 1:
            return self.model.forward(x)
        return xp.concatenate(self._run(parts, lambda m, lo, hi: m.forward(x[lo:hi])))

    def forward_backward(self, x, y, loss_fn):
        """Forward and backward of the batch's mean loss.

        ``loss_fn(logits, y)`` returns (mean loss over those rows, dL/dlogits).
        The gradients are *added* into the model's ``.grad`` (zero them first,
        as for ``model.backward``). Returns (mean loss over the batch, logits).
        """
        xp = backend.xp
        parts = self.slices(len(x))
        batch = len(x)

        def step(replica, lo, hi):
            if replica is not self.model:
                replica.zero_grad()
            logits = replica.forward(x[lo:hi])
            loss, dlogits = loss_fn(logits, y[lo:hi])
            weight = (hi - lo) / batch                  # n_r / B
            replica.backward(dlogits * weight if len(parts) > 1 else dlogits)
            return float(loss) * weight, logits

        results = self._run(parts, step)
        for replica in self._replicas[1:len(parts)]:    # g = sum_r (n_r / B) g_r
            for mine, theirs in zip(self.model.parameters(), replica.parameters()):
                if mine.grad is not None:
                    mine.grad += theirs.grad
        loss = sum(part_loss for part_loss, _ in results)
        logits = (results[0][1] if len(parts) == 1
                  else xp.concatenate([part_logits for _, part_logits in results]))
        return loss, logits

    # -- machinery --------------------------------------------------------------
    def _run(self, parts, work):
        """``work(replica, lo, hi)`` for every slice, replica r on slice r, all at
        once; results in slice order. One slice: the model, on this thread."""
        if len(parts) == 1:
            return [work(self.model, *parts[0])]
        replicas = self._replicas_for(len(parts))
        grad_enabled = is_grad_enabled()
        seeds = (backend.device_rng().integers(0, 2**63, size=len(parts))
                 if self.model.training else [None] * len(parts))

        def run_one(r):
            generator = None if seeds[r] is None else backend.xp.random.default_rng(int(seeds[r]))
            with ops.serial(), set_grad_enabled(grad_enabled), \
                    backend.thread_device_rng(generator):
                return work(replicas[r], *parts[r])

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads - 1,
                                            thread_name_prefix="minivit-replica")
        with ops.blas_threads(1):
            futures = [self._pool.submit(run_one, r) for r in range(1, len(parts))]
            try:
                first = run_one(0)                          # replica 0 on this thread
            finally:
                others = [f.result() for f in futures]      # re-raises a replica's error
        return [first] + others

    def _replicas_for(self, k: int) -> list:
        """k replicas, made alike: the same weights (shared arrays), modes."""
        while len(self._replicas) < k:
            self._replicas.append(_replicate(self.model))
        modules = list(self.model.named_modules())
        params = self.model.parameters()
        for replica in self._replicas[1:k]:
            for (_, mine), (_, theirs) in zip(modules, replica.named_modules()):
                theirs.training = mine.training
            for mine, theirs in zip(params, replica.parameters()):
                theirs.data = mine.data                     # shared, never copied
        return self._replicas[:k]


def _replicate(model):
    """A copy of ``model`` that shares its parameter arrays, with its own
    (zeroed) gradients and no forward caches."""
    detached = []                                           # caches are not copied
    for _, module in model.named_modules():
        for key in ("cache", "attn_probs"):
            if vars(module).get(key) is not None:
                detached.append((module, key, vars(module)[key]))
                object.__setattr__(module, key, None)
    try:
        replica = copy.deepcopy(model, {id(p.data): p.data for p in model.parameters()})
    finally:
        for module, key, value in detached:
            object.__setattr__(module, key, value)
    replica.zero_grad()
    return replica
