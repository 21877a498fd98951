"""Small array helpers shared by the layers, each with its plain reference.

``parallel_rows`` is the CPU's answer to a fused GPU kernel: NumPy runs each
operation on one core, so large elementwise work (GELU, LayerNorm) and the
many small per-head matmuls of attention are split into blocks of rows run on
all cores at once, like an OpenMP parallel-for.

NumPy reduces slowly over a short, contiguous last axis (LayerNorm rows of
D = 64 values, softmax rows of T = 17 scores): it runs one tiny loop per row.
A matrix-vector product with a constant vector gives the same sums through
BLAS, several times faster. Each helper says in one line what it equals, and
``tests/test_ops.py`` checks it against that reference.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from minivit import backend


def sum_last(x):
    """``x.sum(axis=-1, keepdims=True)``, as x @ ones.  (..., n) -> (..., 1)"""
    ones = backend.xp.ones(x.shape[-1], dtype=x.dtype)
    return (x @ ones)[..., None]


def mean_last(x):
    """``x.mean(axis=-1, keepdims=True)``, as x @ (ones / n).  (..., n) -> (..., 1)"""
    n = x.shape[-1]
    weights = backend.xp.full(n, 1.0 / n, dtype=x.dtype)
    return (x @ weights)[..., None]


def sum_rows(x2d):
    """``x2d.sum(axis=0)``, as ones @ x2d: a parameter gradient summed over all
    rows (tokens of every image).  (R, n) -> (n,)"""
    ones = backend.xp.ones(x2d.shape[0], dtype=x2d.dtype)
    return ones @ x2d


def dot_last(a, b):
    """``(a * b).sum(axis=-1, keepdims=True)`` without the (..., n) temporary
    a * b: einsum multiplies and adds in one pass.  (..., n), (..., n) -> (..., 1)"""
    return backend.xp.einsum("...i,...i->...", a, b)[..., None]


def erf(x, out=None):
    """The error function, elementwise, on the active backend.

    From SciPy (``scipy.special.erf``) on NumPy and ``cupyx.scipy.special.erf``
    on CuPy: accurate to a few units in the last place in float64 (tested
    against Python's ``math.erf`` to 1e-14 relative). Only the exact GELU of
    pretrained models needs it.
    """
    if backend.name == "cupy":
        from cupyx.scipy.special import erf as _erf
    else:
        try:
            from scipy.special import erf as _erf
        except ImportError:
            raise ImportError(
                "the exact (erf) GELU of pretrained ViTs needs SciPy: pip install -e "
                "'.[pretrained]' (or pip install scipy); gelu='tanh' needs nothing") from None
    return _erf(x) if out is None else _erf(x, out=out)


_pool = None
_pool_threads = 0
# Below this many elements a kernel runs directly: thread hand-off would cost
# more than it saves. (Tests set it to 0 to exercise the threaded path.)
PARALLEL_MIN_ELEMENTS = 1 << 18


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


def parallel_rows(kernel, *arrays):
    """Run ``kernel(*arrays)`` as independent blocks of the first axis, in threads.

    Equals ``kernel(*arrays)`` provided the kernel treats rows (first-axis
    entries) independently and writes its results into arrays it was given.
    NumPy releases the GIL inside ufuncs and matmul, so the blocks truly run
    in parallel. Small work, a single thread, or the GPU backend (where each
    operation already uses the whole device) run the kernel directly.
    """
    global _pool, _pool_threads
    threads = num_threads()
    rows = arrays[0].shape[0]
    if backend.name != "numpy" or threads == 1 or rows < 2 or arrays[0].size < PARALLEL_MIN_ELEMENTS:
        kernel(*arrays)
        return
    if _pool is None or _pool_threads != threads:
        _pool, _pool_threads = ThreadPoolExecutor(max_workers=threads), threads
    # At least one block per thread, and blocks small enough (~1 MB) to stay
    # in cache between the kernel's successive in-place operations.
    blocks = min(rows, max(threads, -(-arrays[0].nbytes // (1 << 20))))
    blocks = -(-blocks // threads) * threads if blocks < rows else rows
    step = -(-rows // blocks)                               # ceil(rows / blocks)
    futures = [_pool.submit(kernel, *(a[start:start + step] for a in arrays))
               for start in range(0, rows, step)]
    for future in futures:
        future.result()                                     # re-raises a kernel's error
