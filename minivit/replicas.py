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

Threads or processes. NumPy releases the GIL inside each operation, but a
step of a small model is thousands of short operations, and each time one
thread needs the GIL while another holds it, it sleeps and is woken later:
on 2 cores mnist-s replicas ran each 25% slower as threads than alone.
So on Linux the other replicas are forked worker processes (``processes``,
the default there): the model's parameters are moved into shared memory
that every worker maps (an optimizer step or a loaded checkpoint, written in
place, is seen by all), each worker writes its gradients into a shared
buffer of its own that the model's ``.grad`` adds, and the batch slices and
logits travel through pipes. Workers are forked again when the model's
parameters or modules are replaced, or their shapes, dtypes or
``requires_grad`` change. Elsewhere (no fork), in a daemonic process (which
may not have children), or with ``processes=False``, replicas are threads
in this process.
"""

from __future__ import annotations

import copy
import mmap
import multiprocessing
import pickle
import signal
import sys
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy

from minivit import backend, ops
from minivit.module import is_grad_enabled, set_grad_enabled

__all__ = ["Replicas"]

# A slice smaller than this runs no faster on its own core than with the
# rest of the batch: below 2 x this many images the batch is not cut.
MIN_IMAGES_PER_REPLICA = 4


def _fork_available() -> bool:
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


class Replicas:
    """Run ``model`` on a batch as ``threads`` replicas, one slice each.

    ``threads`` defaults to ``minivit.ops.num_threads()``
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
        self.threads = ops.num_threads() if threads is None else int(threads)
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
            return _replica_step(self.model, x, y, loss_fn, 1.0)
        results, replica_grads = self._run(parts, x, y, loss_fn)
        params = _walk(self.model)[1]
        for theirs in replica_grads:                    # g = sum_r (n_r / B) g_r
            for mine, grad in zip(params, theirs):
                if mine.grad is not None:
                    mine.grad += grad
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
        logits_r)] in slice order, and the gradient arrays of replicas 1..k-1
        (each a list in parameter order). Replica 0 is the model, on this
        thread."""
        batch = parts[-1][1]
        jobs = [(x[lo:hi], None if y is None else y[lo:hi], (hi - lo) / batch)
                for lo, hi in parts]
        seeds = (backend.device_rng().integers(0, 2**63, size=len(parts)).tolist()
                 if self.model.training else [None] * len(parts))
        grad_enabled = is_grad_enabled()
        workers = self._workers_for(len(parts), loss_fn)

        def run_one(replica, r):
            generator = None if seeds[r] is None else backend.xp.random.default_rng(seeds[r])
            with ops.serial(), set_grad_enabled(grad_enabled), \
                    backend.thread_device_rng(generator):
                if replica is not self.model and loss_fn is not None:
                    replica.zero_grad()
                x_r, y_r, weight = jobs[r]
                return _replica_step(replica, x_r, y_r, loss_fn, weight)

        with ops.blas_threads(1):
            if workers is not None:
                workers.submit(jobs[1:], loss_fn, seeds[1:], grad_enabled,
                               [m.training for m in _walk(self.model)[0]])
                try:
                    first = run_one(self.model, 0)
                finally:
                    others = workers.collect()          # re-raises a worker's error
                return [first] + others, workers.grads[:len(others)]
            replicas = self._replicas_for(len(parts))
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                thread_name_prefix="minivit-replica")
            futures = [self._pool.submit(run_one, replicas[r], r) for r in range(1, len(parts))]
            try:
                first = run_one(self.model, 0)
            finally:
                others = [f.result() for f in futures]      # re-raises a replica's error
        return [first] + others, [[p.grad for p in _walk(r)[1]] for r in replicas[1:]]

    def _workers_for(self, k: int, loss_fn):
        """Worker processes for replicas 1..k-1, or None to use threads."""
        if (not self.processes or not _pickles(loss_fn)
                or multiprocessing.current_process().daemon):   # may not have children
            return None
        if self._workers is not None and (self._workers.count < k - 1
                                          or not self._workers.matches(self.model)):
            self.close()                                # the model changed: fork anew
        if self._workers is None:
            try:
                self._workers = _Workers(self.model, self.threads - 1)
            except OSError as exc:                      # e.g. no memory or process slots
                warnings.warn(f"minivit.replicas: could not start worker processes ({exc}); "
                              "running the replicas as threads", RuntimeWarning, stacklevel=4)
                self.processes = False
                return None
        return self._workers

    def _replicas_for(self, k: int) -> list:
        """k replicas, made alike: the same weights (shared arrays), modes."""
        while len(self._replicas) < k:
            self._replicas.append(_replicate(self.model))
        modules, params = _walk(self.model)
        for replica in self._replicas[1:k]:
            their_modules, their_params = _walk(replica)
            for mine, theirs in zip(modules, their_modules):
                theirs.training = mine.training
            for mine, theirs in zip(params, their_params):
                theirs.data = mine.data                     # shared, never copied
        return self._replicas[:k]


def _replica_step(replica, x, y, loss_fn, weight):
    """One replica on its slice: (weight x its mean loss, logits) after the
    backward of weight x loss; with no ``loss_fn``, (None, logits)."""
    logits = replica.forward(x)
    if loss_fn is None:
        return None, logits
    loss, dlogits = loss_fn(logits, y)
    replica.backward(dlogits * weight if weight != 1.0 else dlogits)
    return float(loss) * weight, logits


def _pickles(loss_fn) -> bool:
    if loss_fn is None:
        return True
    try:
        pickle.dumps(loss_fn)
        return True
    except Exception:                                       # lambdas, closures
        return False


class _SharedArrays:
    """Arrays shaped like ``like``, in one block of memory shared with
    processes forked afterwards (anonymous ``mmap``, MAP_SHARED)."""

    def __init__(self, like):
        offsets, total = [], 0
        for a in like:
            offsets.append(total)
            total += -(-a.nbytes // 64) * 64                # 64-byte aligned
        self._mmap = mmap.mmap(-1, max(total, 64))
        self.raw = numpy.frombuffer(self._mmap, dtype=numpy.uint8)
        self.arrays = [self.raw[o:o + a.nbytes].view(a.dtype).reshape(a.shape)
                       for o, a in zip(offsets, like)]


def _walk(model):
    """(modules, parameters) of ``model`` in the order of ``named_modules`` and
    ``parameters``, without building their dotted names (this runs every step)."""
    modules, stack = [], [model]
    while stack:
        module = stack.pop()
        modules.append(module)
        stack.extend(reversed(module._modules.values()))
    return modules, [p for m in modules for p in m._parameters.values()]


def _signature(modules, params):
    return ([id(m) for m in modules],
            [(id(p), p.data.shape, p.data.dtype.str, p.requires_grad)
             for p in params])


class _Workers:
    """``count`` forked processes, each with a copy of ``model`` whose
    parameters are views of memory shared with this process's model."""

    def __init__(self, model, count: int):
        modules, params = _walk(model)              # the order the workers use too
        self.count, self.broken = count, False
        self.signature = _signature(modules, params)
        self.params = _SharedArrays([p.data for p in params])
        for p, shared in zip(params, self.params.arrays):
            shared[...] = p.data
            p.data = shared                                 # the model now lives here too
        self._grads = [_SharedArrays([p.data for p in params]) for _ in range(count)]
        self.grads = [g.arrays for g in self._grads]
        context = multiprocessing.get_context("fork")
        self.conns, self.procs = [], []
        try:
            for r in range(count):
                mine, theirs = context.Pipe()
                proc = context.Process(target=_worker_loop,
                                       args=(model, theirs, self._grads[r]),
                                       name=f"minivit-replica-{r + 1}", daemon=True)
                proc.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(proc)
        except BaseException:
            _shutdown(self.conns, self.procs)               # the ones already started
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self.conns, self.procs)

    def matches(self, model) -> bool:
        """Still the model the workers copied; parameters replaced by arrays of
        the same shape are copied into the shared memory (and point to it)."""
        modules, params = _walk(model)
        if self.broken or _signature(modules, params) != self.signature:
            return False
        for p, shared in zip(params, self.params.arrays):
            if p.data is not shared:
                shared[...] = p.data
                p.data = shared
        return True

    def submit(self, jobs, loss_fn, seeds, grad_enabled, training):
        self.sent = []
        for conn, job, seed in zip(self.conns, jobs, seeds):
            try:
                conn.send((*(backend.to_numpy(a) if a is not None else None for a in job[:2]),
                           job[2], loss_fn, seed, grad_enabled, training))
                self.sent.append(True)
            except OSError:                                 # the worker is gone
                self.sent.append(False)

    def collect(self):
        results, error = [], None
        for conn, proc, sent in zip(self.conns, self.procs, self.sent):
            try:
                if not sent:
                    raise EOFError
                status, payload = conn.recv()
            except (EOFError, OSError):
                proc.join(timeout=1)
                self.broken = True                          # forked anew next time
                status, payload = "error", RuntimeError(
                    f"replica worker process {proc.name} (pid {proc.pid}) died "
                    f"(exit code {proc.exitcode}); run with Replicas(processes=False) "
                    "to see the error in this process")
            if status == "error":
                error = error or payload
            results.append(payload)
        if error is not None:
            raise error
        return results

    def close(self):
        self._finalizer()


def _shutdown(conns, procs):
    for conn in conns:
        try:
            conn.send(None)
            conn.close()
        except OSError:
            pass
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()


def _worker_loop(model, conn, grads):
    """A worker process: replica steps on the slices it is sent, until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle
    modules, params = _walk(model)                  # the order the parent sends in
    for p, grad in zip(params, grads.arrays):
        p.grad = grad if p.requires_grad else None
    with ops.serial(), ops.blas_threads(1):
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message is None:
                return
            x, y, weight, loss_fn, seed, grad_enabled, training = message
            try:
                for module, mode in zip(modules, training):
                    object.__setattr__(module, "training", mode)    # as Module.train
                if loss_fn is not None:
                    grads.raw.fill(0)
                generator = None if seed is None else backend.xp.random.default_rng(seed)
                with set_grad_enabled(grad_enabled), backend.thread_device_rng(generator):
                    result = _replica_step(model, x, y, loss_fn, weight)
                conn.send(("ok", result))
            except BaseException as exc:                    # sent back, raised there
                try:
                    conn.send(("error", exc))
                except Exception:
                    conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _replicate(model):
    """A copy of ``model`` that shares its parameter arrays, with its own
    (zeroed) gradients and no forward caches."""
    modules, params = _walk(model)
    detached = []                                           # caches are not copied
    for module in modules:
        for key in ("cache", "attn_probs"):
            if vars(module).get(key) is not None:
                detached.append((module, key, vars(module)[key]))
                object.__setattr__(module, key, None)
    try:
        replica = copy.deepcopy(model, {id(p.data): p.data for p in params})
    finally:
        for module, key, value in detached:
            object.__setattr__(module, key, value)
    replica.zero_grad()
    return replica
