"""Atomic file writes: a crash or Ctrl-C mid-write never damages the last good file.

The data go to a temporary file in the target's own folder (same filesystem,
so the final ``os.replace`` is an atomic rename), are flushed and fsynced,
and only then replace the target. On any error the temporary file is removed
and the previous file, if any, is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", check=None):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears whole or not at all.

    Parent folders are created. The file gets the usual 0644 permissions
    (``mkstemp`` would leave 0600). ``check(tmp_path)``, if given, runs on the
    complete temporary file before it replaces ``path`` (e.g. a checksum of a
    download); if it raises, ``path`` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def save_figure(fig, path, **savefig_kwargs) -> str:
    """Write a matplotlib figure as PNG atomically; returns the path."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", **savefig_kwargs)
    return os.fspath(path)


def write_text(path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
