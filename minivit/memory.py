"""Keep freed memory in the process, so the next step reuses it without page faults.

NumPy allocates a fresh array for every intermediate result and frees it when
the last reference goes. glibc's malloc gives large freed blocks back to the
operating system: it trims the free space at the top of its heap beyond a
threshold, and unmaps blocks above another. The next forward asks for the same
memory again, and the kernel hands it over one 4 KiB page at a time, each
first touch a page fault that also zeroes the page: on a small model's
inference forward, a large share of its time (``docs/performance.md``). A
training step faults far less (it keeps its activations until backward), an
inference forward all the more.

``keep_freed_memory`` asks glibc (``mallopt``) to serve blocks up to 32 MiB
from its heap (its largest such setting; NumPy gives bigger arrays huge pages
anyway) and to keep up to 1 GiB of free heap instead of returning it. The
price: the process's resident memory stays near its peak once reached, as a
caching allocator's does (``release_freed_memory`` gives it back at once,
after a one-time peak). ``import minivit`` calls it, except with
``MINIVIT_KEEP_FREED_MEMORY=0``; elsewhere than glibc (macOS, Windows, musl)
it does nothing. It sets the whole process's malloc, PyTorch's and every
other library's included: ``benchmarks/bench_train.py`` therefore runs
PyTorch in a process of its own, with glibc's defaults, as its users run it.
"""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 << 20   # glibc accepts at most HEAP_MAX_SIZE / 2 = 32 MiB
TRIM_THRESHOLD_BYTES = 1 << 30
ENV_VAR = "MINIVIT_KEEP_FREED_MEMORY"

_kept = False


def glibc_version() -> str | None:
    """The C library's version if it is glibc (e.g. ``"2.36"``), else None."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")      # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    if not value or not value.startswith("glibc "):
        return None
    return value.split()[1]


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; True if it took effect (also if
    already set by an earlier call), False where there is no glibc."""
    global _kept
    if _kept:
        return True
    if glibc_version() is None:
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Both, or neither: setting either turns off glibc's own adjustment of both.
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        return False
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        return False
    _kept = True
    return True


def release_freed_memory() -> bool:
    """Give the free memory of the heap back to the system now (glibc's
    ``malloc_trim``); True if any went back. For after a one-time peak, such as
    converting a checkpoint (``minivit.pretrained.load_pretrained`` calls it),
    so that the temporaries of loading do not stay resident."""
    if glibc_version() is None:
        return False
    malloc_trim = ctypes.CDLL(None).malloc_trim
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return malloc_trim(0) == 1


def is_kept() -> bool:
    """Whether this process runs with ``keep_freed_memory`` in effect."""
    return _kept


def keep_unless_disabled() -> bool:
    """``keep_freed_memory()`` unless ``MINIVIT_KEEP_FREED_MEMORY`` says 0 (at import)."""
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "1", "true", "yes", "on"):
        raise ValueError(f"{ENV_VAR} must be 1 (the default: keep freed memory for reuse) "
                         f"or 0 (leave glibc's malloc as it is), got {value!r}")
    return keep_freed_memory()
