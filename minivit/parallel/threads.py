"""Threads: a kernel run on blocks of rows on every core, and BLAS kept out of the way.

``parallel_rows`` is the CPU's answer to a fused GPU kernel: NumPy runs each
operation on one core, so large elementwise work (GELU, LayerNorm, AdamW) and
the many small per-head matmuls of attention are split into blocks of rows
run on all cores at once, like an OpenMP parallel-for. The kernels it runs
live in ``minivit/kernels/``; ``blas_threads`` and ``serial`` let a caller
that already runs one thread per core (``minivit.parallel.replicas``) keep
BLAS and ``parallel_rows`` from starting more.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from minivit import backend


_pool = None
_pool_threads = 0
# Below this many elements a kernel runs directly: thread hand-off would cost
# more than it saves. (Tests set it to 0 to exercise the threaded path.)
PARALLEL_MIN_ELEMENTS = 1 << 18
# Block size for the kernels: a block and its temporaries stay in the core's
# cache (docs/performance.md has the measurement that chose it).
BLOCK_BYTES = 1 << 18
# Work that minivit's threads finished this recently (seconds) is taken as a
# sign that more will follow soon: see ``ran_recently``.
RECENT_SECONDS = 0.05
_last_parallel = float("-inf")


def num_threads() -> int:
    """Threads for ``parallel_rows``: ``MINIVIT_NUM_THREADS``, else the cores
    this process may use."""
    env = os.environ.get("MINIVIT_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MINIVIT_NUM_THREADS must be a positive integer, got {env!r}") \
                from None
        if value < 1:
            raise ValueError(f"MINIVIT_NUM_THREADS must be a positive integer, got {env!r}")
        return value
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_rows(kernel, *arrays, cache_blocks: bool = True):
    """Run ``kernel(*arrays)`` as independent blocks of the first axis, in threads.

    Equals ``kernel(*arrays)`` provided the kernel treats rows (first-axis
    entries) independently and writes its results into arrays it was given.
    Each thread takes one contiguous share of the rows and runs the kernel on
    it block by block, each block ~``BLOCK_BYTES`` of ``arrays[0]``, so that
    the kernel's successive in-place steps and temporaries stay in cache
    (on a whole large array each step is a trip through memory);
    ``cache_blocks=False`` gives each thread its share in one call (a matmul,
    which blocks for the cache itself and would re-pack its weights). NumPy
    releases the GIL inside ufuncs and matmul, so the shares truly run in
    parallel; BLAS runs single-threaded meanwhile (``blas_threads``). In
    ``serial()`` mode the blocks run one after the other on this thread.
    Small work, or the GPU backend (where each operation already uses the
    whole device), runs the kernel directly.
    """
    rows = arrays[0].shape[0]
    if backend.name != "numpy" or rows < 2 or arrays[0].size < PARALLEL_MIN_ELEMENTS:
        kernel(*arrays)
        return
    step = (max(1, BLOCK_BYTES * rows // max(1, arrays[0].nbytes))   # rows per block
            if cache_blocks else rows)

    def run_share(lo, hi):
        for start in range(lo, hi, step):
            stop = min(start + step, hi)
            kernel(*(a[start:stop] for a in arrays))

    parallel_shares(run_share, rows)


def parallel_shares(run_share, count: int) -> None:
    """``run_share(lo, hi)`` on one contiguous share of ``range(count)`` per
    thread, at once (on this thread alone in ``serial()`` mode); the shares
    cover the range exactly. ``parallel_rows`` is this over rows of arrays;
    a kernel over many arrays at once (AdamW's over every parameter) shares
    out its elements."""
    global _pool, _pool_threads, _last_parallel
    threads = 1 if is_serial() else min(num_threads(), count)
    if threads <= 1:
        run_share(0, count)
        return
    if _pool is None or _pool_threads != threads:
        _pool, _pool_threads = ThreadPoolExecutor(max_workers=threads,
                                                  initializer=warm_blas), threads
    bounds = [count * t // threads for t in range(threads + 1)]
    with blas_threads(1):                                   # no BLAS threads on top of ours
        futures = [_pool.submit(run_share, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
        for future in futures:
            future.result()                                 # re-raises a kernel's error
    _last_parallel = time.monotonic()


def ran_recently() -> bool:
    """True if minivit's threads finished work within ``RECENT_SECONDS``.

    For a caller choosing between BLAS's threads and one: right after our
    threads ran, more of their work is likely to follow, and BLAS's worker
    threads, spinning after a call, would take cores from it."""
    return time.monotonic() - _last_parallel < RECENT_SECONDS


class _ThreadState(threading.local):
    serial = False                      # every thread's default


_thread_state = _ThreadState()


def is_serial() -> bool:
    """True inside ``serial()`` on this thread: start no threads of your own."""
    return _thread_state.serial


@contextlib.contextmanager
def serial():
    """Within this block, in this thread, ``parallel_rows`` runs its blocks
    one after another on this thread: for a thread that is already one of
    several working at once (``minivit.parallel.replicas``)."""
    previous = _thread_state.serial
    _thread_state.serial = True
    try:
        yield
    finally:
        _thread_state.serial = previous


_blas_controllers = None


def warm_blas() -> None:
    """One mid-sized product (512 x 256 by 256 x 512), once, from the thread
    that calls it, on one BLAS thread and then on all of them.

    Why: until some product with a few hundred output columns has run in a
    process, OpenBLAS runs the products with a long inner dimension and few
    columns (a weight gradient dy^T x summed over every token) several times
    slower, in every later call: state the library keeps per process, most
    likely how its packing buffer was first touched, and threads that call
    it at once get buffers of their own (``docs/performance.md``). A model whose products are all narrow (a small
    ViT) never runs such a product itself. Called at import on the NumPy
    backend, so forked replicas inherit the warm state, and in each of
    ``parallel_shares``'s threads as it starts. It costs less than one
    training step.
    """
    if backend.name != "numpy":
        return
    import numpy  # noqa: PLC0415
    a, b = numpy.ones((512, 256), numpy.float32), numpy.ones((256, 512), numpy.float32)
    with blas_threads(1):
        a @ b
    a @ b


@contextlib.contextmanager
def blas_threads(n: int):
    """Within this block, BLAS (NumPy's matmul) uses at most ``n`` threads.

    Why: OpenBLAS's worker threads spin for a while after each call, waiting
    for the next. While our own threads run blocks of a kernel, or replicas
    of the model, those spinning threads would take cores from them; and the
    small matmuls of one block are faster on one thread anyway. The setting
    is process-wide (BLAS has one), so only the thread that waits for the
    workers changes it. Through threadpoolctl; a no-op without it.
    """
    global _blas_controllers
    if _blas_controllers is None:
        try:
            import threadpoolctl
            _blas_controllers = [c for c in threadpoolctl.ThreadpoolController().lib_controllers
                                 if c.user_api == "blas"]
        except ImportError:
            _blas_controllers = []
    before = [c.get_num_threads() for c in _blas_controllers]
    for c, current in zip(_blas_controllers, before):
        if current > n:
            c.set_num_threads(n)
    try:
        yield
    finally:
        for c, current in zip(_blas_controllers, before):
            c.set_num_threads(current)


warm_blas()
