"""Data parallelism over the cores of one machine: one model replica per core.

A batch is cut into one contiguous slice per replica; each runs the forward
and backward of its own replica on its slice, single-threaded, and the
replicas' gradients are summed into the model's, each scaled by its share
of the batch (the averaged gradient: see ``minivit.parallel``).

Why: at the sizes minivit trains (rows of tens to hundreds of values), most
operations are too small to split across threads, so while one core runs
them the other idles; and BLAS's worker threads spin between calls, taking
cores from our own. A replica per core keeps every core busy with whole
layers.

Replicas share the model's parameter arrays (``.data``, never copied, so an
optimizer step or a loaded checkpoint is seen by all); each has its own
``.grad``, its own forward caches and, for dropout, its own random generator
drawn from the process's (``backend.device_rng``), so a seed still fixes
every mask. Replica 0 is the model itself. Slices are in order, so the
logits come back in the batch's order.

Threads or processes. NumPy releases the GIL inside each operation, but a
step of a small model is thousands of short operations, and each time one
thread needs the GIL while another holds it, it sleeps and is woken later,
so replicas as threads run slower than alone (``docs/performance.md``). On
Linux the other replicas are therefore forked worker processes
(``minivit.parallel.workers``; ``processes``, the default there). Workers
are forked again when the model's parameters or modules are replaced, or
their shapes, dtypes or ``requires_grad`` change. Elsewhere (no fork), in a
daemonic process (which may not have children), or with
``processes=False``, replicas are threads in this process.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from minivit import backend
from minivit.module import is_grad_enabled, parameters_of, set_grad_enabled
from minivit.parallel.threads import blas_threads, num_threads, serial
from minivit.parallel.workers import Workers, add_into, replica_step

__all__ = ["Replicas"]

# A slice smaller than this runs no faster on its own core than with the
# rest of the batch: below 2 x this many images the batch is not cut.
MIN_IMAGES_PER_REPLICA = 4


def _fork_available() -> bool:
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


class Replicas:
    """Run ``model`` on a batch as ``threads`` replicas, one slice each.

    ``threads`` defaults to ``minivit.parallel.threads.num_threads()``
    (``MINIVIT_NUM_THREADS``, else the cores this process may use).
    ``processes`` (default: where fork is available, i.e. Linux) runs the
    replicas other than the model itself in worker processes instead of
    threads (see the module docstring); ``close()`` ends them (they also end
    with this object or the program). With one thread, on the GPU backend,
    or for a batch too small to cut, the model runs alone, exactly as
    ``model.forward`` / ``model.backward``. Not a layer: it has no
    forward/backward pair of its own, only ``logits`` (an evaluation) and
    ``loss_and_grads`` (a training step's two passes, run by each replica).
    """

    def __init__(self, model, threads: int | None = None, processes: bool | None = None):
        self.model = model
        self.threads = num_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"Replicas needs threads >= 1, got {threads}")
        self.processes = _fork_available() if processes is None else bool(processes)
        if self.processes and not _fork_available():
            raise ValueError("Replicas(processes=True) needs the fork start method "
                             "(Linux); use processes=False (threads) here")
        self._replicas = [model]              # thread replicas, made on first use
        self._pool = None
        self._workers = None                  # worker processes, forked on first use

    def slices(self, batch: int) -> list[tuple[int, int]]:
        """The (start, stop) rows each replica takes of a batch of ``batch``."""
        k = min(self.threads, batch // MIN_IMAGES_PER_REPLICA)
        if backend.name != "numpy" or k < 2:
            return [(0, batch)]
        return [(batch * r // k, batch * (r + 1) // k) for r in range(k)]

    def logits(self, x):
        """Logits of ``x`` (B, C, H, W) -> (B, classes), as ``model.forward``
        (forward only: gradients come from ``loss_and_grads``). Under
        ``no_grad`` the replicas keep nothing for backward either."""
        parts = self.slices(len(x))
        if len(parts) == 1:
            return self.model.forward(x)
        results, _ = self._run(parts, x)
        return backend.xp.concatenate([logits for _, logits in results])

    def loss_and_grads(self, x, y, loss_fn):
        """Forward and backward of the batch's mean loss.

        ``loss_fn(logits, y)`` returns (mean loss over those rows, dL/dlogits);
        for worker processes it must pickle (a module-level function or a
        ``functools.partial`` of one; anything else runs the replicas as
        threads). The gradients are *added* into the model's ``.grad`` (zero
        them first, as for ``model.backward``). Returns (mean loss over the
        batch, logits).
        """
        parts = self.slices(len(x))
        if len(parts) == 1:
            return replica_step(self.model, x, y, loss_fn, 1.0)
        results, add_their_grads = self._run(parts, x, y, loss_fn)
        add_their_grads()                               # g = sum_r (n_r / B) g_r
        loss = sum(part_loss for part_loss, _ in results)
        return loss, backend.xp.concatenate([part_logits for _, part_logits in results])

    def close(self) -> None:
        """End the worker processes (forked again if used after this)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    # -- machinery --------------------------------------------------------------
    def _run(self, parts, x, y=None, loss_fn=None):
        """Replica r on slice r, all at once: [(loss_r * n_r / B or None,
        logits_r)] in slice order, and a function that adds the gradients of
        replicas 1..k-1 into the model's. Replica 0 is the model, on this
        thread."""
        batch = parts[-1][1]
        jobs = [(x[lo:hi], None if y is None else y[lo:hi], (hi - lo) / batch)
                for lo, hi in parts]
        seeds = (backend.device_rng().integers(0, 2**63, size=len(parts)).tolist()
                 if self.model.training else [None] * len(parts))
        grad_enabled = is_grad_enabled()
        modules = self.model.modules()
        workers = self._workers_for(len(parts), loss_fn, modules, jobs[1][0])

        def run_one(replica, r):
            generator = None if seeds[r] is None else backend.xp.random.default_rng(seeds[r])
            with serial(), set_grad_enabled(grad_enabled), \
                    backend.thread_device_rng(generator):
                if replica is not self.model and loss_fn is not None:
                    replica.zero_grad()
                x_r, y_r, weight = jobs[r]
                return replica_step(replica, x_r, y_r, loss_fn, weight)

        with blas_threads(1):
            if workers is not None:
                workers.submit(jobs[1:], loss_fn, seeds[1:], grad_enabled,
                               [m.training for m in modules])
                try:
                    first = run_one(self.model, 0)
                finally:
                    others = workers.collect()          # re-raises a worker's error
                return [first] + others, partial(workers.add_grads, parameters_of(modules),
                                                 len(others))
            replicas = self._replicas_for(len(parts), modules)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                thread_name_prefix="minivit-replica")
            futures = [self._pool.submit(run_one, replicas[r], r) for r in range(1, len(parts))]
            try:
                first = run_one(self.model, 0)
            finally:
                others = [f.result() for f in futures]      # re-raises a replica's error
        return [first] + others, partial(add_into, parameters_of(modules),
                                         [[p.grad for p in r.parameters()] for r in replicas[1:]])

    def _workers_for(self, k: int, loss_fn, modules, images):
        """Worker processes for replicas 1..k-1, or None to use threads.
        ``modules``: the model's; ``images``: a slice like those to come."""
        if (not self.processes or not _pickles(loss_fn)
                or multiprocessing.current_process().daemon):   # may not have children
            return None
        if self._workers is not None and (self._workers.count < k - 1
                                          or not self._workers.matches(modules)):
            self.close()                                # the model changed: fork anew
        if self._workers is None:
            try:
                self._workers = Workers(self.model, self.threads - 1, images)
            except OSError as exc:                      # e.g. no memory or process slots
                warnings.warn(f"minivit.parallel.replicas: could not start worker processes ({exc}); "
                              "running the replicas as threads", RuntimeWarning, stacklevel=4)
                self.processes = False
                return None
        return self._workers

    def _replicas_for(self, k: int, modules) -> list:
        """k replicas, made alike: the same weights (shared arrays), modes.
        ``modules``: the model's."""
        while len(self._replicas) < k:
            self._replicas.append(_replicate(self.model))
        params = parameters_of(modules)
        for replica in self._replicas[1:k]:
            for mine, theirs in zip(modules, replica.modules()):
                theirs.training = mine.training
            for mine, theirs in zip(params, replica.parameters()):
                theirs.data = mine.data                     # shared, never copied
        return self._replicas[:k]


def _pickles(loss_fn) -> bool:
    if loss_fn is None:
        return True
    try:
        pickle.dumps(loss_fn)
        return True
    except Exception:                                       # lambdas, closures
        return False


def _replicate(model):
    """A copy of ``model`` that shares its parameter arrays, with its own
    (zeroed) gradients and none of the state its last forward left
    (each module's ``forward_state``)."""
    detached = []                                           # caches are not copied
    for module in model.modules():
        for key in module.forward_state:
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
