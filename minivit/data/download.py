"""Getting files onto disk: mirrors, checksums, atomic writes, safe advice.

A dataset file is trusted when the md5 of its **content** matches the
registry: the decompressed bytes for a ``.gz`` file, the bytes themselves
otherwise. Checking the content rather than the archive means a file that was
recompressed (Debian's ``dataset-fashion-mnist`` gzips the original data
again, with another header) or gunzipped by hand still verifies, while any
change to the data itself does not.

Downloads stream into a temporary file beside the destination, are checked,
and only then renamed into place (an atomic ``os.replace``): a destination
either does not exist or is complete and verified.

Every problem raises :class:`DataError` (a ``ValueError``) naming the file,
what was expected and what was found, with advice that is safe where the file
lives (never "delete it" for a file in a system folder or on a read-only mount).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, Sequence

from minivit.atomic import atomic_write

__all__ = [
    "DataError",
    "md5sum",
    "md5_bytes",
    "content_md5",
    "read_content",
    "user_can_replace",
    "fix_advice",
    "file_error",
    "cache_root",
    "fetch_first",
]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

# Folders whose files belong to the system (package managers), even when the
# current user (root) could technically write there.
_SYSTEM_PREFIXES = ("/usr/", "/opt/", "/lib/", "/etc/", "/nix/store/", "/snap/")


class DataError(ValueError):
    """A dataset file is missing, corrupt or cannot be downloaded."""


# --------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------
def md5sum(path) -> str:
    """Hex md5 digest of a file's bytes as stored (compressed or not)."""
    h = hashlib.md5(usedforsecurity=False)  # integrity check, not security
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_bytes(raw: bytes) -> str:
    """Hex md5 digest of bytes already in memory."""
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def read_content(path) -> bytes:
    """The bytes of ``path``, gunzipped when the file is gzip.

    Compression is detected from the content (gzip magic 1f 8b), not the
    file name, so a renamed file still loads.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            # BadGzipFile (an OSError), a truncated stream (EOFError) and a
            # damaged deflate block (zlib.error) all mean the same thing here.
            raise file_error(path, f"corrupt gzip data ({exc})") from exc
    return raw


def content_md5(path) -> str:
    """md5 of the file's content: of the decompressed bytes for a gzip file."""
    return md5_bytes(read_content(path))


# --------------------------------------------------------------------------
# Advice that is safe where the file lives
# --------------------------------------------------------------------------
def user_can_replace(path) -> bool:
    """May we tell the user to delete ``path``? Only when it is theirs.

    False for files in system folders (``/usr``, ``/opt``, ...), in folders
    the user cannot write (read-only mounts included), or owned by someone
    else.
    """
    path = Path(path).absolute()
    if str(path).startswith(_SYSTEM_PREFIXES):
        return False
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        return path.stat().st_uid == os.geteuid()
    except (OSError, AttributeError):  # gone, or no geteuid (Windows)
        return True


def fix_advice(path) -> str:
    """What to do about a bad file at ``path``, phrased for where it lives."""
    if user_can_replace(path):
        return ("Delete the file so that it is downloaded again, or point --data-dir "
                "(or the environment variable MINIVIT_DATA) at a folder holding a good copy.")
    return (f"The file is in {Path(path).absolute().parent}, a folder that is not yours to "
            "change (a system or read-only folder): leave it alone and use a folder of "
            "your own instead, e.g. --data-dir ~/data/minivit (or MINIVIT_DATA=...), "
            "where the files are downloaded and checked.")


def file_error(path, problem: str) -> DataError:
    """A DataError that names the file, the problem and a safe fix."""
    return DataError(f"{path}: {problem}. {fix_advice(path)}")


# --------------------------------------------------------------------------
# Where downloads go
# --------------------------------------------------------------------------
def cache_root() -> Path:
    """``$XDG_CACHE_HOME`` (when absolute, as XDG requires), else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".cache"


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------
def _fetch(url: str, dest: Path, check: Callable[[Path], None] | None, timeout: float) -> int:
    """Stream ``url`` to a temporary file next to ``dest``, check it, move it in.

    ``check(tmp_path)`` raises DataError when the download is not the expected
    file. Returns the number of bytes written; on any failure (network error,
    bad checksum, Ctrl-C) the temporary file is removed and ``dest`` is untouched.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "minivit-data/1.0"})
    verify = None if check is None else (lambda tmp: check(Path(tmp)))
    size = 0
    with atomic_write(dest, check=verify) as out, \
            urllib.request.urlopen(request, timeout=timeout) as resp:
        while chunk := resp.read(1 << 16):
            out.write(chunk)
            size += len(chunk)
    return size


def fetch_first(
    file_name: str,
    mirrors: Sequence[str],
    folder: Path,
    check: Callable[[Path], None] | None,
    what: str,
    offline_hint: str,
    timeout: float = 30.0,
    quiet: bool = False,
) -> Path:
    """Download ``file_name`` into ``folder`` from the first mirror that delivers
    a file passing ``check``; returns its path.

    Raises:
        DataError: no mirror worked; the message lists every URL with its
            error, then ``offline_hint`` (how to proceed without internet).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {folder} ({exc}). Choose a writable folder "
            f"with --data-dir (or MINIVIT_DATA). {offline_hint}") from exc
    dest = folder / file_name
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file_name
        if not quiet:
            print(f"minivit: downloading {file_name} from {url} ... ", end="",
                  file=sys.stderr, flush=True)
        try:
            size = _fetch(url, dest, check, timeout)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # OSError covers URLError/HTTPError/timeouts; ValueError our
            # checksum DataError and malformed URLs. Try the next mirror.
            errors.append((url, exc))
            if not quiet:
                print(f"failed ({exc})", file=sys.stderr, flush=True)
            continue
        if not quiet:
            print(f"ok ({size / 1e6:.1f} MB, checked)", file=sys.stderr, flush=True)
        return dest
    tried = "\n".join(f"  {url}: {exc}" for url, exc in errors) or "  (no mirrors given)"
    raise DataError(f"could not download {file_name} ({what}) into {folder}.\n"
                    f"Mirrors tried:\n{tried}\n{offline_hint}")
