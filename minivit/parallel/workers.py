"""The worker processes of ``Replicas``: forked copies of the model that share its memory.

Each worker holds a copy of the model whose parameters are views of one
block of memory shared with the parent (anonymous ``mmap``, MAP_SHARED, made
before the fork), so an optimizer step or a loaded checkpoint, written in
place, is seen by all. Each worker writes its gradients into a shared
buffer of its own, which the parent adds into the model's ``.grad``: the
model's gradients are views of one flat array too, so that sum is one
addition per worker, not one per parameter. Each worker's slice of the
images is written into a shared buffer of its own (through a pipe it would
be copied twice and wake the worker once per pipe buffer, while it waits to
start); the labels, the logits and the loss travel through pipes.
``replica_step`` is the work of one replica, in a worker or in the parent.
"""

from __future__ import annotations

import inspect
import mmap
import multiprocessing
import signal
import weakref

import numpy

from minivit import backend, kernels
from minivit.module import parameters_of, set_grad_enabled
from minivit.parallel import threads

__all__ = ["SharedArrays", "Workers", "add_into", "backward_for_parameters", "replica_step"]


def backward_for_parameters(model, dout):
    """``model.backward(dout)`` in a training step, which needs the
    parameters' gradients alone: a model whose ``backward`` takes
    ``input_grad`` (``ViT``) is told not to compute its input's gradient, as
    PyTorch skips it for inputs that do not require grad. Other models run
    their ``backward(dout)`` as it is."""
    backward = model.backward
    if _takes_input_grad(getattr(backward, "__func__", backward)):
        return backward(dout, input_grad=False)
    return backward(dout)


# function -> whether it takes input_grad; weak, so that a swapped-in closure
# (and the model it refers to) is not kept alive by the cache
_TAKES_INPUT_GRAD = weakref.WeakKeyDictionary()


def _takes_input_grad(function) -> bool:
    try:
        known = _TAKES_INPUT_GRAD.get(function)
    except TypeError:                           # no weak reference to it: not cached
        return "input_grad" in inspect.signature(function).parameters
    if known is None:
        known = "input_grad" in inspect.signature(function).parameters
        _TAKES_INPUT_GRAD[function] = known
    return known


def add_into(params, grad_lists):
    """Add each list of gradients (in ``params``' order) into ``params``' ``.grad``:
    g = sum_r (n_r / B) g_r, the replicas' parts already scaled."""
    for grads in grad_lists:
        for p, grad in zip(params, grads):
            if p.grad is not None:
                p.grad += grad


def replica_step(replica, x, y, loss_fn, weight):
    """One replica on its slice: (weight x its mean loss, logits) after the
    backward of weight x loss; with no ``loss_fn``, (None, logits)."""
    logits = replica.forward(x)
    if loss_fn is None:
        return None, logits
    loss, dlogits = loss_fn(logits, y)
    backward_for_parameters(replica,                            # g_r scaled by n_r / B
                            dlogits * weight if weight != 1.0 else dlogits)
    return float(loss) * weight, logits


class SharedArrays:
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

    def flat(self):
        """All the arrays as one 1-D array (padding included, zero unless
        written), or None if their dtypes differ."""
        dtypes = {a.dtype for a in self.arrays}
        return self.raw.view(dtypes.pop()) if len(dtypes) == 1 else None

    def holds(self, array) -> bool:
        """Whether ``array`` (shape and dtype as given) fits in the block."""
        return array.nbytes <= self.raw.nbytes


def _in_shared_block(array) -> bool:
    """Whether ``array`` is a view into a ``SharedArrays`` block (an earlier
    fork's): the arrays it views end in one over an ``mmap``."""
    while isinstance(array.base, numpy.ndarray):
        array = array.base
    return isinstance(array.base, memoryview) and isinstance(array.base.obj, mmap.mmap)


def _walk(model):
    """(modules, parameters) of ``model``, in the order every process uses."""
    modules = model.modules()
    return modules, parameters_of(modules)


def _signature(modules, params):
    """What a forked copy depends on, other than the parameters' values
    (their shapes and dtypes are those of the shared arrays: ``matches``)."""
    return [id(m) for m in modules], [(id(p), p.requires_grad) for p in params]


class Workers:
    """``count`` forked processes, each with a copy of ``model`` whose
    parameters are views of memory shared with this process's model."""

    def __init__(self, model, count: int, images=None):
        """``images``: a slice of the batch like those to come; each worker's
        shared buffer holds that many bytes (larger slices go by pipe)."""
        modules, params = _walk(model)              # the order the workers use too
        self.count, self.broken = count, False
        self.signature = _signature(modules, params)
        self.params = SharedArrays([p.data for p in params])
        for p, shared in zip(params, self.params.arrays):
            shared[...] = p.data
            p.data = shared                                 # the model now lives here too
        self._grads = [SharedArrays([p.data for p in params]) for _ in range(count)]
        self.grads = [g.arrays for g in self._grads]
        self.own_grads = SharedArrays([p.data for p in params])    # the model's, flat
        for p, flat in zip(params, self.own_grads.arrays):
            # A gradient that is a view into another's array (the flat buckets
            # of minivit.parallel.distributed) stays there; add_grads then goes
            # parameter by parameter.
            if p.requires_grad and (p._grad is None or p._grad.base is None
                                    or _in_shared_block(p._grad)):
                if p._grad is not None:     # else zeros already: pages never written cost
                    flat[...] = p._grad     # no memory, so a model that only infers holds none
                p.grad = flat
        self._images = [SharedArrays([numpy.empty(0 if images is None else images.nbytes,
                                                  numpy.uint8)]) for _ in range(count)]
        context = multiprocessing.get_context("fork")
        self.conns, self.procs = [], []
        try:
            for r in range(count):
                mine, theirs = context.Pipe()
                proc = context.Process(target=_worker_loop,
                                       args=(model, theirs, self._grads[r], self._images[r]),
                                       name=f"minivit-replica-{r + 1}", daemon=True)
                proc.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(proc)
        except BaseException:
            _shutdown(self.conns, self.procs)               # the ones already started
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self.conns, self.procs)

    def matches(self, modules) -> bool:
        """Still the model (``modules``: its ``modules()``) the workers copied;
        parameters replaced by arrays of the same shape and dtype are copied
        into the shared memory (and point to it)."""
        params = parameters_of(modules)
        if self.broken or _signature(modules, params) != self.signature:
            return False
        replaced = [(p, shared) for p, shared in zip(params, self.params.arrays)
                    if p.data is not shared]
        if any(p.data.shape != shared.shape or p.data.dtype != shared.dtype
               for p, shared in replaced):
            return False
        for p, shared in replaced:
            shared[...] = p.data
            p.data = shared
        return True

    def submit(self, jobs, loss_fn, seeds, grad_enabled, training):
        self.sent = []
        for conn, images, job, seed in zip(self.conns, self._images, jobs, seeds):
            x = backend.to_numpy(job[0])
            if images.holds(x):                 # the worker reads it from shared memory
                images.raw[:x.nbytes].view(x.dtype).reshape(x.shape)[...] = x
                x = (x.shape, x.dtype.str)
            try:
                conn.send((x, None if job[1] is None else backend.to_numpy(job[1]),
                           job[2], loss_fn, seed, grad_enabled, training, kernels.mode()))
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

    def add_grads(self, params, count):
        """Add the first ``count`` workers' gradients into ``params``' (the
        model's, in order): one flat addition per worker while the model's
        gradients are still the flat array's views, else one per parameter."""
        mine = self.own_grads.flat()
        if mine is None or not all(p.grad is flat for p, flat in
                                   zip(params, self.own_grads.arrays) if p.requires_grad):
            add_into(params, self.grads[:count])
            return
        for theirs in self._grads[:count]:       # padding and fixed parameters: zeros
            mine += theirs.flat()

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


def _worker_loop(model, conn, grads, images):
    """A worker process: replica steps on the slices it is sent, until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle
    modules, params = _walk(model)                  # the order the parent sends in
    for p, grad in zip(params, grads.arrays):
        p.grad = grad if p.requires_grad else None
    with threads.serial(), threads.blas_threads(1):
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message is None:
                return
            x, y, weight, loss_fn, seed, grad_enabled, training, kernel_mode = message
            if isinstance(x, tuple):                        # (shape, dtype) in shared memory
                shape, dtype = x
                x = images.raw[:numpy.prod(shape, dtype=int) * numpy.dtype(dtype).itemsize
                               ].view(dtype).reshape(shape)
            try:
                kernels.use(kernel_mode)
                for module, mode in zip(modules, training):
                    object.__setattr__(module, "training", mode)    # as Module.train
                if loss_fn is not None:
                    grads.raw.fill(0)
                generator = None if seed is None else backend.xp.random.default_rng(seed)
                with set_grad_enabled(grad_enabled), backend.thread_device_rng(generator):
                    result = replica_step(model, x, y, loss_fn, weight)
                conn.send(("ok", result))
            except BaseException as exc:                    # sent back, raised there
                try:
                    conn.send(("error", exc))
                except Exception:
                    conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
