"""Data loading: MNIST / Fashion-MNIST from IDX files, batching, augmentation.

This module is the host-side boundary of the project: everything here is
NumPy and everything it returns is NumPy. Training code moves batches onto
the active backend with :func:`minivit.backend.to_device`.

The pieces, in the order data flows through them:

* :func:`find_data_dir` decides *where* a dataset lives (argument, then
  ``MINIVIT_DATA``, then a system folder, then ``~/.cache/minivit``);
* :func:`download` fetches missing files from public mirrors, atomically and
  md5-checked, so a broken download never leaves a bad file behind;
* :func:`read_idx` parses one IDX file (plain or gzip) and validates it;
* :func:`load_dataset` ties these together and returns
  ``(x_train, y_train, x_test, y_test)`` as uint8 arrays;
* :func:`normalize` turns uint8 images (N, 28, 28) into float (N, 1, 28, 28);
* :func:`augment` applies random shifts / small rotations to a float batch;
* :func:`iterate_batches` / :class:`BatchIterator` cut shuffled mini-batches.

Every problem with the files on disk raises :class:`DataError` (a
``ValueError``) whose message names the file, says what is wrong and how to
fix it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import sys
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from minivit import backend

__all__ = [
    "DataError",
    "DatasetInfo",
    "DATASETS",
    "FILE_NAMES",
    "MNIST_MEAN",
    "MNIST_STD",
    "FASHION_MEAN",
    "FASHION_STD",
    "get_dataset_info",
    "read_idx",
    "write_idx",
    "md5sum",
    "verify_md5",
    "find_data_dir",
    "dataset_files",
    "download",
    "load_dataset",
    "normalize",
    "denormalize",
    "warp_affine",
    "augment",
    "iterate_batches",
    "BatchIterator",
]


class DataError(ValueError):
    """A dataset file is missing, corrupt or cannot be downloaded."""


# How to get out of trouble; appended to every file-level error message.
_FIX_HINT = (
    "Delete the file so that it is downloaded again, or point the environment "
    "variable MINIVIT_DATA at a folder holding a good copy."
)

# --------------------------------------------------------------------------
# IDX format
# --------------------------------------------------------------------------
# An IDX file is a big-endian header followed by raw data:
#   bytes 0-3  magic: 0x00 0x00 <type code> <number of dimensions>
#   then       one uint32 per dimension
#   then       prod(dims) items of the given type.
# MNIST-style files use type 0x08 (unsigned byte), so the two magics we know
# are 0x0801 = 2049 (labels, 1-D) and 0x0803 = 2051 (images, 3-D).
IDX_LABELS = 2049
IDX_IMAGES = 2051
_IDX_NDIM = {IDX_LABELS: 1, IDX_IMAGES: 3}

_GZIP_MAGIC = b"\x1f\x8b"


def _file_error(path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. {_FIX_HINT}")


def _read_raw(path) -> bytes:
    """Return the bytes of ``path``, gunzipped when the file is gzip.

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
            raise _file_error(path, f"corrupt gzip data ({exc})") from exc
    return raw


def read_idx(path) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a uint8 array.

    Returns:
        images: uint8 (N, rows, cols) for magic 2051, or
        labels: uint8 (N,) for magic 2049.

    Raises:
        DataError: the file is truncated, has an unknown magic number, holds
            more or fewer bytes than its header announces, or is a corrupt
            gzip. The message names the file and the fix.
    """
    raw = _read_raw(path)
    if len(raw) < 4:
        raise _file_error(path, f"truncated: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_NDIM:
        raise _file_error(
            path,
            f"unknown IDX magic number {magic} (0x{magic:08x}); expected "
            f"{IDX_IMAGES} (images) or {IDX_LABELS} (labels) - not an MNIST-style IDX file",
        )
    ndim = _IDX_NDIM[magic]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise _file_error(
            path, f"truncated header: {len(raw)} bytes, the header needs {header_len}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "trailing data"
        raise _file_error(
            path,
            f"{what}: header says shape {dims} = {expected} bytes of data, "
            f"the file holds {actual}",
        )
    # frombuffer is a read-only view of ``raw``; copy so callers own the array.
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header_len).reshape(dims).copy()


def write_idx(path, array, compress: bool | None = None) -> Path:
    """Write a uint8 array as an IDX file (the inverse of :func:`read_idx`).

    Args:
        path: destination; gzip-compressed when ``compress`` is True, or when
            it is None and the name ends in ``.gz``.
        array: uint8 labels (N,) or images (N, rows, cols).

    The gzip header carries no timestamp, so the same array always gives the
    same bytes (and md5) - handy for tests and fixtures.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx needs a uint8 array, got {array.dtype}")
    magic = {1: IDX_LABELS, 3: IDX_IMAGES}.get(array.ndim)
    if magic is None:
        raise ValueError(
            f"write_idx writes labels (N,) or images (N, rows, cols); got shape {array.shape}"
        )
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


def md5sum(path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 digest of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)  # integrity check, not security
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path, expected: str) -> None:
    """Raise DataError naming the file and both digests unless they match."""
    actual = md5sum(path)
    if actual != expected.lower():
        raise _file_error(path, f"md5 mismatch: expected {expected}, got {actual}")


# --------------------------------------------------------------------------
# Dataset registry
# --------------------------------------------------------------------------
# The four standard file names (without ``.gz``), in the order load_dataset
# returns them.
FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Per-pixel statistics of the training sets, on the [0, 1] scale.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, fetch, check and normalise one dataset.

    ``md5`` maps each name in ``files`` to the md5 of its ``.gz`` file.
    Tests build their own with ``dataclasses.replace`` (local mirrors, small
    counts, their own md5 table).
    """

    name: str
    mirrors: tuple[str, ...]
    md5: Mapping[str, str]
    mean: float
    std: float
    class_names: tuple[str, ...]
    files: tuple[str, ...] = FILE_NAMES
    n_train: int = 60000
    n_test: int = 10000
    image_shape: tuple[int, int] = (28, 28)
    system_dirs: tuple[str, ...] = ()  # checked after MINIVIT_DATA, before the cache


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mean=MNIST_MEAN,
        std=MNIST_STD,
        class_names=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8d0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83fd310",
        },
        mean=FASHION_MEAN,
        std=FASHION_STD,
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


def get_dataset_info(dataset: str | DatasetInfo) -> DatasetInfo:
    """Look a dataset up by name (``mnist``, ``fashion-mnist``/``fashion_mnist``).

    A :class:`DatasetInfo` is passed through unchanged.
    """
    if isinstance(dataset, DatasetInfo):
        return dataset
    key = str(dataset).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; valid names are {', '.join(DATASETS)}"
        )
    return DATASETS[key]


# --------------------------------------------------------------------------
# Where the files live
# --------------------------------------------------------------------------
def dataset_files(dataset: str | DatasetInfo, folder) -> dict[str, Path | None]:
    """Map each of the dataset's file names to its path in ``folder``, or None.

    The ``.gz`` file is preferred when both forms exist, because it is the one
    an md5 can check.
    """
    info = get_dataset_info(dataset)
    folder = Path(folder)
    found: dict[str, Path | None] = {}
    for base in info.files:
        found[base] = None
        for candidate in (folder / f"{base}.gz", folder / base):
            if candidate.is_file():
                found[base] = candidate
                break
    return found


def _has_all_files(info: DatasetInfo, folder) -> bool:
    return all(p is not None for p in dataset_files(info, folder).values())


def _cache_root() -> Path:
    # XDG says a relative XDG_CACHE_HOME is invalid and must be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".cache"


def find_data_dir(dataset: str | DatasetInfo = "mnist", data_dir=None) -> Path:
    """Decide which folder holds (or will hold) ``dataset``'s files.

    Resolution order, first match wins:

    1. ``data_dir`` when given;
    2. the environment variable ``MINIVIT_DATA``: its ``<dataset>``
       subfolder if that exists (one variable for several datasets),
       otherwise the folder itself;
    3. the dataset's system folders (``/usr/share/datasets/fashion-mnist``
       for Fashion-MNIST), only if they hold all four files;
    4. the user cache ``$XDG_CACHE_HOME/minivit/<dataset>``, by default
       ``~/.cache/minivit/<dataset>``.

    The folder is not created here; :func:`download` does that.
    """
    info = get_dataset_info(dataset)
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("MINIVIT_DATA", "").strip()
    if env:
        root = Path(env).expanduser()
        sub = root / info.name
        return sub if sub.is_dir() else root
    for system_dir in info.system_dirs:
        if _has_all_files(info, system_dir):
            return Path(system_dir)
    return _cache_root() / "minivit" / info.name


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------
def _fetch(url: str, folder: Path, dest: Path, expected_md5: str | None, timeout: float) -> int:
    """Stream ``url`` to a temporary file next to ``dest``, check it, move it in.

    The temporary file lives in the same folder so that ``os.replace`` is an
    atomic rename: ``dest`` either does not exist or is complete and checked.
    Returns the number of bytes written; raises on any failure, after
    removing the temporary file.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "minivit-data/1.0"})
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=".part")
    done = False
    try:
        h = hashlib.md5(usedforsecurity=False)
        size = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
        if expected_md5 is not None and h.hexdigest() != expected_md5.lower():
            raise DataError(
                f"md5 mismatch for {dest.name} from {url}: expected {expected_md5}, "
                f"got {h.hexdigest()} ({size} bytes)"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache file may be shared
        os.replace(tmp, dest)
        done = True
        return size
    finally:
        # Any exit without the rename - network error, bad checksum, Ctrl-C -
        # removes the partial file.
        if not done:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def download(
    dataset: str | DatasetInfo = "mnist",
    folder=None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    quiet: bool = False,
) -> Path:
    """Make sure ``folder`` holds the dataset's four files, fetching what is missing.

    Args:
        dataset: a registry name or a :class:`DatasetInfo`.
        folder: destination (created if needed); default :func:`find_data_dir`.
        mirrors: base URLs tried in turn; default the registry's mirrors.
        timeout: seconds for each connection / read.
        quiet: no progress lines on stderr.

    Files already there are kept; the ``.gz`` ones are md5-checked. A missing
    file is fetched as ``<name>.gz`` and accepted only if its md5 matches.

    Returns:
        The folder.

    Raises:
        DataError: a present file fails its md5 check, or no mirror could
            deliver a missing file (the message lists the mirrors and errors).
    """
    info = get_dataset_info(dataset)
    folder = find_data_dir(info) if folder is None else Path(folder).expanduser()
    mirrors = tuple(info.mirrors if mirrors is None else mirrors)
    gz_names = ", ".join(f"{base}.gz" for base in info.files)

    present = dataset_files(info, folder)
    for base, path in present.items():
        if path is not None and path.name.endswith(".gz") and info.md5.get(base):
            verify_md5(path, info.md5[base])
    missing = [base for base, path in present.items() if path is None]
    if not missing:
        return folder

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {folder} ({exc}). Point MINIVIT_DATA at a "
            f"writable folder, or at one that already holds {gz_names}."
        ) from exc

    for base in missing:
        fname = f"{base}.gz"
        dest = folder / fname
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + fname
            if not quiet:
                print(f"minivit: downloading {fname} from {url} ... ", end="",
                      file=sys.stderr, flush=True)
            try:
                size = _fetch(url, folder, dest, info.md5.get(base), timeout)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # OSError covers URLError/HTTPError/timeouts; ValueError our
                # checksum DataError and malformed URLs. Try the next mirror.
                errors.append((url, exc))
                if not quiet:
                    print(f"failed ({exc})", file=sys.stderr, flush=True)
                continue
            if not quiet:
                print(f"ok ({size / 1e6:.1f} MB, md5 checked)", file=sys.stderr, flush=True)
            break
        else:
            tried = "\n".join(f"  {url}: {exc}" for url, exc in errors) or "  (no mirrors given)"
            raise DataError(
                f"could not download {fname} ({info.name}) into {folder}.\n"
                f"Mirrors tried:\n{tried}\n"
                f"Without internet access, copy the four files {gz_names} (gzipped "
                f"or not) into a folder and set MINIVIT_DATA to it, e.g. "
                f"`export MINIVIT_DATA=/path/to/{info.name}`, or put them in {folder}."
            )
    return folder


# load_dataset's ``download`` flag hides the function inside it; keep a handle.
_download = download


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def load_dataset(
    dataset: str | DatasetInfo = "mnist",
    data_dir=None,
    download: bool = True,
    verify: bool = True,
    quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load a dataset as uint8 NumPy arrays, downloading it when missing.

    Args:
        dataset: ``"mnist"``, ``"fashion-mnist"`` or a :class:`DatasetInfo`.
        data_dir: folder of the files; default :func:`find_data_dir`.
        download: fetch missing files (otherwise a missing file is an error).
        verify: md5-check the ``.gz`` files used (uncompressed files have no
            published md5; their IDX structure and counts are still checked).
        quiet: no download progress on stderr.

    Returns:
        x_train uint8 (n_train, 28, 28), y_train uint8 (n_train,),
        x_test uint8 (n_test, 28, 28), y_test uint8 (n_test,);
        60000 / 10000 samples for MNIST and Fashion-MNIST.
    """
    info = get_dataset_info(dataset)
    folder = find_data_dir(info, data_dir)
    files = dataset_files(info, folder)
    if any(p is None for p in files.values()):
        if not download:
            missing = ", ".join(b for b, p in files.items() if p is None)
            raise DataError(
                f"{info.name} files missing in {folder}: {missing} (.gz or uncompressed). "
                f"Call load_dataset(download=True), or set MINIVIT_DATA to a folder "
                f"holding the four files."
            )
        _download(info, folder, quiet=quiet)
        files = dataset_files(info, folder)

    arrays = []
    for i, base in enumerate(info.files):
        path = files[base]
        if verify and path.name.endswith(".gz") and info.md5.get(base):
            verify_md5(path, info.md5[base])
        arr = read_idx(path)
        is_images = i % 2 == 0
        count = info.n_train if i < 2 else info.n_test
        want = (count, *info.image_shape) if is_images else (count,)
        if arr.shape != want:
            raise _file_error(
                path, f"expected {'images' if is_images else 'labels'} of shape {want}, "
                      f"found {arr.shape}"
            )
        if not is_images and arr.size and arr.max() >= len(info.class_names):
            raise _file_error(
                path, f"label {int(arr.max())} out of range for {len(info.class_names)} classes"
            )
        arrays.append(arr)
    return tuple(arrays)


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------
def normalize(images: np.ndarray, mean: float, std: float, dtype=np.float32) -> np.ndarray:
    """Scale uint8 images to [0, 1], standardise, and add the channel axis.

    Args:
        images: uint8 (N, H, W) (or (N, 1, H, W)).
        mean, std: per-pixel statistics on the [0, 1] scale, e.g.
            ``MNIST_MEAN, MNIST_STD`` or ``get_dataset_info(name).mean/.std``.

    Returns:
        float (N, 1, H, W) of ``dtype``: ``(images / 255 - mean) / std``.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim != 4:
        raise ValueError(f"normalize expects (N, H, W) or (N, 1, H, W), got shape {images.shape}")
    # In place on one float copy: MNIST train is 47M pixels, no need for three.
    out = images.astype(dtype)
    out *= 1.0 / 255.0  # in-place ops keep the float dtype of ``out``
    out -= mean
    out /= std
    return out


def denormalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Inverse of :func:`normalize` up to the uint8 rounding: values in [0, 1]."""
    return np.clip(np.asarray(x) * std + mean, 0.0, 1.0)


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------
def warp_affine(images: np.ndarray, shifts, angles_deg=0.0, fill: float = 0.0) -> np.ndarray:
    """Rotate each image about its centre, then shift it, in one vectorised pass.

    Args:
        images: float (B, C, H, W).
        shifts: (B, 2) or (2,) pixel offsets ``(dy, dx)``: content moves down
            by dy and right by dx.
        angles_deg: (B,) or scalar rotation angles in degrees, positive =
            counter-clockwise as displayed.
        fill: value of pixels that come from outside the image (0, or the
            normalised background ``-mean/std``).

    Returns:
        (B, C, H, W) array of the same dtype.

    We compute, for every *output* pixel, where it comes from in the input
    (the inverse map), then sample the input there with bilinear
    interpolation. Working backwards leaves no holes in the output.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"warp_affine expects (B, C, H, W), got shape {images.shape}")
    B, C, H, W = images.shape
    shifts = np.broadcast_to(np.asarray(shifts, dtype=np.float64), (B, 2))
    theta = np.deg2rad(np.broadcast_to(np.asarray(angles_deg, dtype=np.float64), (B,)))
    cos = np.cos(theta)[:, None, None]  # (B, 1, 1) to broadcast over the grid
    sin = np.sin(theta)[:, None, None]

    # Output grid relative to the image centre, minus the shift: (B, H, W).
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    ys = np.arange(H, dtype=np.float64)[None, :, None]
    xs = np.arange(W, dtype=np.float64)[None, None, :]
    dy = ys - cy - shifts[:, 0, None, None]
    dx = xs - cx - shifts[:, 1, None, None]
    # Undo the rotation to find the source coordinates. The y axis points
    # down, so this inverse map makes a positive angle turn the picture
    # counter-clockwise on screen (the PIL / torchvision convention).
    src_y = sin * dx + cos * dy + cy
    src_x = cos * dx - sin * dy + cx

    # Bilinear interpolation: the four neighbouring pixels and their weights.
    y0 = np.floor(src_y).astype(np.intp)
    x0 = np.floor(src_x).astype(np.intp)
    wy1 = (src_y - y0).astype(images.dtype)
    wx1 = (src_x - x0).astype(images.dtype)
    wy0, wx0 = 1 - wy1, 1 - wx1

    flat = images.reshape(B, C, H * W)
    b_idx = np.arange(B)[:, None, None]  # (B, 1, 1)
    c_idx = np.arange(C)[None, :, None]  # (1, C, 1)
    out = np.zeros((B, C, H * W), dtype=images.dtype)
    covered = np.zeros((B, 1, H * W), dtype=images.dtype)  # weight from inside
    for yy, xx, w in (
        (y0, x0, wy0 * wx0),
        (y0, x0 + 1, wy0 * wx1),
        (y0 + 1, x0, wy1 * wx0),
        (y0 + 1, x0 + 1, wy1 * wx1),
    ):
        # Zero padding: a neighbour outside the image contributes nothing.
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        idx = (np.clip(yy, 0, H - 1) * W + np.clip(xx, 0, W - 1)).reshape(B, 1, H * W)
        weight = np.where(inside, w, 0).reshape(B, 1, H * W)
        out += weight * flat[b_idx, c_idx, idx]  # gather (B, C, H*W)
        covered += weight
    if fill:
        out += fill * (1 - covered)  # the outside share of each pixel
    return out.reshape(B, C, H, W)


def augment(
    images: np.ndarray,
    rng: np.random.Generator | None = None,
    max_shift: int = 2,
    max_rotate_deg: float = 10.0,
    fill: float = 0.0,
) -> np.ndarray:
    """Random translation and small rotation of every image in a batch.

    Args:
        images: float (B, C, H, W), e.g. the output of :func:`normalize`.
        rng: NumPy generator; default :func:`minivit.backend.host_rng`.
        max_shift: each image moves by an integer number of pixels drawn
            uniformly from [-max_shift, max_shift], independently in y and x.
        max_rotate_deg: rotation angle drawn uniformly from
            [-max_rotate_deg, max_rotate_deg].
        fill: value for pixels shifted in from outside (see below).

    Returns:
        (B, C, H, W) of the input dtype. With ``max_shift=0`` and
        ``max_rotate_deg=0`` the input itself is returned, unchanged.

    The default zero padding is the background of raw [0, 1] images; after
    :func:`normalize` the background is ``-mean/std``, so pass that as
    ``fill`` (e.g. ``functools.partial(augment, fill=-MNIST_MEAN / MNIST_STD)``).
    """
    images = np.asarray(images)
    if max_shift == 0 and max_rotate_deg == 0:
        return images
    if images.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {images.shape}")
    rng = backend.host_rng() if rng is None else rng
    B = images.shape[0]
    shifts = rng.integers(-int(max_shift), int(max_shift), size=(B, 2), endpoint=True)
    angles = rng.uniform(-max_rotate_deg, max_rotate_deg, size=B)
    return warp_affine(images, shifts, angles, fill)


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------
def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    rng: np.random.Generator | None = None,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield one epoch of ``(xb, yb)`` mini-batches (NumPy, copies).

    Args:
        x: inputs (N, ...); y: targets (N, ...).
        batch_size: samples per batch.
        shuffle: visit samples in a random order drawn from ``rng``.
        rng: np.random.Generator; default :func:`minivit.backend.host_rng`.
            The same seed gives the same order.
        augment: optional ``augment(xb, rng) -> xb`` applied to each batch
            (e.g. :func:`augment` itself).
        drop_last: drop the final batch when it is smaller than batch_size
            (by default it is kept, so every sample is seen once).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    rng = backend.host_rng() if rng is None else rng
    n = len(x)
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        # Fancy indexing copies, so a caller or augment may modify xb freely.
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, rng)
        yield xb, yb


class BatchIterator:
    """Re-iterable mini-batches: each ``iter()`` is a new epoch (new shuffle).

    >>> batches = BatchIterator(x, y, 128, rng=np.random.default_rng(0))
    >>> for epoch in range(3):
    ...     for xb, yb in batches:
    ...         ...
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        rng: np.random.Generator | None = None,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        drop_last: bool = False,
    ):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.augment = augment
        self.drop_last = drop_last

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # rng resolved per epoch so a later backend.seed() is honoured.
        rng = backend.host_rng() if self.rng is None else self.rng
        return iterate_batches(
            self.x, self.y, self.batch_size, self.shuffle, rng, self.augment, self.drop_last
        )
