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

import contextlib
import os
import threading
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


# erf(x) = x P(x^2) / Q(x^2) on [-4, 4], a rational approximation for float32
# (the coefficients of Eigen's float32 erf); beyond |x| = 4, erf(x) = +-1 to
# float32 precision (1 - erf(4) = 1.5e-8), so x is clamped there.
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
          -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
          -2.72614225801306e-10)                 # P's coefficients of s^0 .. s^6, s = x^2
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
          -2.13374055278905e-04, -1.45660718464996e-05)   # Q's, s^0 .. s^4
ERF_FLOAT32_MAX_ABS_ERROR = 5e-7                 # bound checked by tests/test_ops.py


def polynomial(s, coefficients):
    """sum_k coefficients[k] s^k by Horner's rule, in place on one new array."""
    value = s * coefficients[-1]
    for c in coefficients[-2:0:-1]:
        value += c
        value *= s
    value += coefficients[0]
    return value


def erf_rational(x, out):
    """``out = erf(x)`` for float32 by the rational form above: only
    multiplications, additions and one division, which NumPy runs with SIMD
    on every x86 CPU (SciPy's erf runs one element at a time). Max absolute
    error below ``ERF_FLOAT32_MAX_ABS_ERROR`` (a few float32 ulps of 1); NaN
    stays NaN, -0.0 stays -0.0, |erf| <= 1. ``out`` may be ``x``."""
    xp = backend.xp
    xc = xp.clip(x, -4.0, 4.0)
    s = xc * xc
    xp.divide(polynomial(s, _ERF_P), polynomial(s, _ERF_Q), out=out)
    out *= xc
    return xp.clip(out, -1.0, 1.0, out=out)      # the fit overshoots 1 by an ulp or two


def erf(x, out=None):
    """The error function, elementwise, on the active backend.

    float64: SciPy's ``scipy.special.erf`` on NumPy and
    ``cupyx.scipy.special.erf`` on CuPy, accurate to a few units in the last
    place (tested against Python's ``math.erf`` to 1e-14 relative), so
    gradient checks see the exact function. float32 on NumPy:
    ``erf_rational``, accurate to float32 rounding and several times faster
    (tested against SciPy's erf).
    """
    if backend.name == "numpy" and x.dtype == backend.xp.float32:
        return erf_rational(x, backend.xp.empty_like(x) if out is None else out)
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
# Block size for the kernels: fastest at 256-512 KB per block (measured on
# GELU, LayerNorm: 1.5-3x faster than whole 12 MB arrays, on one thread).
BLOCK_BYTES = 1 << 18


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
    global _pool, _pool_threads
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

    threads = 1 if getattr(_thread_state, "serial", False) else min(num_threads(), rows)
    if threads == 1:
        run_share(0, rows)
        return
    if _pool is None or _pool_threads != threads:
        _pool, _pool_threads = ThreadPoolExecutor(max_workers=threads), threads
    bounds = [rows * t // threads for t in range(threads + 1)]
    with blas_threads(1):                                   # no BLAS threads on top of ours
        futures = [_pool.submit(run_share, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
        for future in futures:
            future.result()                                 # re-raises a kernel's error


_thread_state = threading.local()


@contextlib.contextmanager
def serial():
    """Within this block, in this thread, ``parallel_rows`` runs its blocks
    one after another on this thread: for a thread that is already one of
    several working at once (``minivit.replicas``)."""
    previous = getattr(_thread_state, "serial", False)
    _thread_state.serial = True
    try:
        yield
    finally:
        _thread_state.serial = previous


_blas_controllers = None


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
