"""Fused CPU kernels, compiled by numba: one loop per operation instead of one
pass over memory per arithmetic step.

NumPy runs every arithmetic step of a kernel as its own pass over the array
(the tanh GELU thirteen, LayerNorm and softmax six or seven each); a loop
compiled to machine code does the whole formula per element, or per row,
while it is in registers. `numba <https://numba.pydata.org>`_ is the standard
library for this: it compiles plain Python loops over NumPy arrays with
LLVM, and installs as wheels. It is optional, the extra ``fast`` (``pip install -e ".[fast]"``);
without it the NumPy kernels of ``minivit/kernels/`` run, unchanged.

One file per kind of work, each function's docstring naming the reference it
replaces; ``tests/test_kernels_fused.py`` checks each against it:

==============  ==========================================================
file            what it holds
==============  ==========================================================
layernorm.py    LayerNorm forward and backward, one pass per row
gelu.py         GELU (tanh and exact) with dy/dx, one pass per element
softmax.py      the attention softmax with its scale, and its backward
attention.py    attention's per-head work for W images at once (short sequences)
lanes.py        W images in SIMD lanes: copies into and out of it, products
simd.py         W-lane values (and an 8 x 8 transpose) for those kernels
dropout.py      the dropout mask and product in one pass
bias.py         a Linear layer's bias added to its product's rows
warp.py         the augmentation's rotate-and-shift, bilinear, per image
loss.py         softmax cross-entropy: loss and dlogits in one pass per row
adamw.py        the AdamW update, one pass over each parameter
exp.py          float32 exp and erf that compile to SIMD code
cache.py        numba's on-disk cache kept true to all these sources
==============  ==========================================================

Compiled code is cached on disk (``cache=True``): beside the sources, or,
where that directory is not writable, in numba's user-wide cache
(``NUMBA_CACHE_DIR`` if set). ``cache.py`` empties that cache when any
source the kernels are compiled from changed (numba itself checks only the
file that defines each kernel, not the functions it inlines from others).

Threads: the compiled loops are serial and release the GIL (``nogil``); large
work runs them on blocks of rows on every core through
``minivit.parallel.threads.parallel_rows``, as the NumPy kernels run. numba's
own thread pool (``prange``) is not used: its workers stalled
for milliseconds when BLAS's threads were still spinning after a matmul,
and it may not be entered by two threads at once nor, for some of its
threading layers, be used again after a fork. So the fused kernels inherit
what the NumPy kernels already do right: one thread per core, BLAS kept to
one thread meanwhile, and serial loops in the replicas and their forked
workers (``threads.serial``).
"""

from __future__ import annotations

import importlib.util

MIN_NUMBA = (0, 60)
EXTRA = 'pip install -e ".[fast]"'

_status = None          # None: not checked yet; "" usable; else why not


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _installed() -> bool:
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):          # e.g. sys.modules["numba"] = None
        return False


def problem() -> str:
    """Why the fused kernels cannot run here ("" when they can). Imports
    nothing heavier than numba's version module."""
    global _status
    if _status is None:
        if not _installed():
            _status = f"numba is not installed (install the extra: {EXTRA})"
        else:
            try:
                from numba import __version__ as version
            except Exception as exc:                 # a broken install
                _status = f"numba does not import ({exc}); reinstall it: {EXTRA}"
            else:
                if _version_tuple(version) < MIN_NUMBA:
                    _status = (f"numba {version} is older than the "
                               f"{'.'.join(map(str, MIN_NUMBA))} the fused kernels need "
                               f"(upgrade: {EXTRA})")
                else:
                    _status = ""
                    from minivit.kernels.fused import cache
                    cache.refresh_once()        # numba's cache sees one file, not its imports
        if _status and _installed():
            import warnings
            warnings.warn(f"minivit: fused kernels off, NumPy kernels run instead: {_status}",
                          RuntimeWarning, stacklevel=3)
    return _status


def available() -> bool:
    """True when numba of a usable version is installed."""
    return problem() == ""


def require() -> None:
    """Raise a RuntimeError naming the extra when the fused kernels cannot run."""
    if not available():
        raise RuntimeError(f"MINIVIT_KERNELS=fused needs numba >= "
                           f"{'.'.join(map(str, MIN_NUMBA))}: {problem()}")


def run(kernel, arrays, scalars=()):
    """``kernel(*arrays, *scalars)``, the arrays split into blocks of rows
    (their first axis) on every core by ``parallel_rows`` when they are large;
    the kernel must treat rows independently."""
    from minivit.parallel.threads import parallel_rows
    parallel_rows(lambda *blocks: kernel(*blocks, *scalars), *arrays)
