"""Keeping numba's on-disk cache of the fused kernels true to their sources.

numba stamps each cached kernel with a hash of the file that defines it, and
nothing else. The fused kernels inline functions from other files (``exp.py``'s
exp and erf, ``minivit/kernels/erf.py``'s coefficients), so after an edit or a
``git pull`` that changes only those, numba would go on loading machine code
compiled from the old ones. This module stamps the whole set instead: a hash
of every source the kernels are compiled from, kept in a file beside numba's
cache; where it differs, the package's cached kernels are deleted (numba then
compiles them again, once) and the new stamp is written.

Only numba's choice of cache directory is borrowed from it (its locator
classes, the order it tries them in); if that ever changes shape, nothing is
deleted and a warning says so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
STAMP_NAME = "minivit-fused-sources.sha256"
_CACHE_SUFFIXES = (".nbi", ".nbc")
_done = False


def sources() -> list:
    """The files the fused kernels are compiled from: this package's modules
    and ``minivit/kernels/erf.py`` (whose coefficients exp.py bakes in)."""
    own = sorted(os.path.join(HERE, name) for name in os.listdir(HERE) if name.endswith(".py"))
    return own + [os.path.join(os.path.dirname(HERE), "erf.py")]


def digest(paths=None) -> str:
    """sha256 over the contents of ``paths`` (default: :func:`sources`) and numba's version."""
    import numba
    h = hashlib.sha256(numba.__version__.encode())
    for path in sources() if paths is None else paths:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def cache_dir():
    """The directory numba caches this package's kernels in (``__pycache__``
    beside the sources where writable, else numba's user-wide cache, or
    ``NUMBA_CACHE_DIR``), or None where numba finds none."""
    from numba.core.caching import CacheImpl
    any_source = os.path.join(HERE, "exp.py")
    for locator_class in CacheImpl._locator_classes:       # numba's own order
        locator = locator_class.from_function(cache_dir, any_source)
        if locator is not None:
            return locator.get_cache_path()
    return None


def refresh(directory=None, stamp=None) -> bool:
    """Delete the cached kernels in ``directory`` (default: :func:`cache_dir`)
    if they were compiled from other sources than ``stamp`` (default:
    :func:`digest`); True when it deleted. Deletes only files numba names after
    this package's modules; a concurrent process that loses its file recompiles."""
    if directory is None or stamp is None:
        try:
            directory = cache_dir() if directory is None else directory
            stamp = digest() if stamp is None else stamp
        except Exception as exc:                   # numba's internals moved
            warnings.warn(f"minivit: could not check numba's cache of the fused kernels "
                          f"({exc!r}); after changing minivit/kernels/fused/exp.py, delete "
                          f"numba's cache by hand", RuntimeWarning, stacklevel=2)
            return False
        if directory is None:
            return False
    stamp_path = os.path.join(directory, STAMP_NAME)
    try:
        with open(stamp_path) as f:
            if f.read().strip() == stamp:
                return False
    except OSError:
        pass
    modules = {name[:-3] for name in os.listdir(HERE) if name.endswith(".py")}
    for name in os.listdir(directory):
        if name.endswith(_CACHE_SUFFIXES) and name.split(".", 1)[0] in modules:
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:              # another process was first
                pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=STAMP_NAME, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(stamp + "\n")
    os.replace(tmp, stamp_path)                    # atomic: never half a stamp
    return True


def refresh_once() -> None:
    """:func:`refresh`, once per process (before the first kernel is loaded)."""
    global _done
    if not _done:
        _done = True
        try:
            refresh()
        except OSError as exc:                     # a read-only cache: numba copes
            warnings.warn(f"minivit: could not refresh numba's cache of the fused "
                          f"kernels ({exc})", RuntimeWarning, stacklevel=2)
