"""File formats: IDX (MNIST), CIFAR's python pickles, folders of image files.

Each reader returns host NumPy arrays of uint8 pixels and integer labels and
refuses a malformed file with a :class:`~minivit.data.download.DataError`
that names the file and what is wrong with it.

* IDX (LeCun's format for MNIST and Fashion-MNIST): :func:`read_idx`,
  :func:`write_idx`.
* CIFAR-10 "python version": each batch file is a pickled dict with
  ``b"data"`` uint8 (N, 3072) (the 1024 red, then green, then blue values of
  a 32x32 image, row by row) and ``b"labels"`` (N ints): :func:`read_cifar_batch`.
* An image folder, one subfolder per class (the layout torchvision's
  ImageFolder made standard): :func:`read_image_folder`.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
from pathlib import Path

import numpy as np

from minivit.data.download import DataError, file_error, read_content

__all__ = [
    "IDX_IMAGES",
    "IDX_LABELS",
    "parse_idx",
    "read_idx",
    "write_idx",
    "parse_cifar_batch",
    "read_cifar_batch",
    "IMAGE_EXTENSIONS",
    "read_image_folder",
]

# --------------------------------------------------------------------------
# IDX
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


def parse_idx(raw: bytes, path="<bytes>") -> np.ndarray:
    """Parse the (decompressed) bytes of an IDX file; ``path`` names it in errors.

    Returns:
        images: uint8 (N, rows, cols) for magic 2051, or
        labels: uint8 (N,) for magic 2049.
    """
    if len(raw) < 4:
        raise file_error(path, f"truncated: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_NDIM:
        raise file_error(
            path,
            f"unknown IDX magic number {magic} (0x{magic:08x}); expected "
            f"{IDX_IMAGES} (images) or {IDX_LABELS} (labels) - not an MNIST-style IDX file",
        )
    ndim = _IDX_NDIM[magic]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise file_error(
            path, f"truncated header: {len(raw)} bytes, the header needs {header_len}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "trailing data"
        raise file_error(
            path,
            f"{what}: header says shape {dims} = {expected} bytes of data, "
            f"the file holds {actual}",
        )
    # frombuffer is a read-only view of ``raw``; copy so callers own the array.
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header_len).reshape(dims).copy()


def read_idx(path) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a uint8 array (see :func:`parse_idx`).

    Raises:
        DataError: the file is truncated, has an unknown magic number, holds
            more or fewer bytes than its header announces, or is a corrupt
            gzip. The message names the file and the fix.
    """
    return parse_idx(read_content(path), path)


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


# --------------------------------------------------------------------------
# CIFAR-10 python pickles
# --------------------------------------------------------------------------
class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, nothing else.

    A pickle can run arbitrary code when loaded; the CIFAR batches need only
    dicts, lists, bytes and NumPy's array reconstruction, so every other
    global is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def parse_cifar_batch(raw: bytes, path="<bytes>", image_shape=(3, 32, 32)):
    """Parse one CIFAR batch pickle.

    Returns:
        images uint8 (N, 3, 32, 32) (channels first, as the model wants them),
        labels int64 (N,).
    """
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types for damaged input
        raise file_error(path, f"not a CIFAR python batch: cannot unpickle it ({exc})") from exc
    if not isinstance(batch, dict):
        raise file_error(path, f"not a CIFAR python batch: holds a {type(batch).__name__}, "
                               "expected a dict")
    # Pickles written by Python 2 have bytes keys; re-pickled ones str keys.
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    labels_key = "labels" if "labels" in batch else "fine_labels"
    if "data" not in batch or labels_key not in batch:
        raise file_error(path, f"not a CIFAR python batch: keys {sorted(batch)}, "
                               "expected 'data' and 'labels'")
    pixels = np.asarray(batch["data"])
    labels = np.asarray(batch[labels_key], dtype=np.int64)
    per_image = math.prod(image_shape)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != per_image:
        raise file_error(path, f"'data' is {pixels.dtype} {pixels.shape}, expected uint8 "
                               f"(N, {per_image})")
    if labels.shape != (len(pixels),):
        raise file_error(path, f"{len(labels)} labels for {len(pixels)} images")
    return pixels.reshape(len(pixels), *image_shape), labels


def read_cifar_batch(path, image_shape=(3, 32, 32)):
    """Read one CIFAR batch file (see :func:`parse_cifar_batch`)."""
    return parse_cifar_batch(read_content(path), path, image_shape)


# --------------------------------------------------------------------------
# Folders of images, one subfolder per class
# --------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow, which is not installed; "
                        "install it with `pip install pillow` (or the [plot] extra)") from None
    return Image


def read_image_folder(root, image_size: int | None = None, channels: int = 3,
                      class_names=None, prepare=None):
    """Read every image under ``root/<class>/`` into one uint8 array.

    Args:
        root: a folder with one subfolder per class; the sorted subfolder
            names are the classes (label 0, 1, ...), as in torchvision.
        image_size: resize every image to ``image_size`` x ``image_size``
            (bilinear); None keeps the files' size, which must then agree.
        channels: 1 (greyscale) or 3 (RGB); every image is converted.
        class_names: expected classes (e.g. the training folder's, when
            reading the test folder); a subfolder outside it is an error.
        prepare: instead of the resize, a function from the converted PIL
            image to a uint8 (H, W, channels) array, e.g. timm's evaluation
            geometry for a pretrained model
            (``minivit.pretrained.EvalTransform(...).resize_and_crop``).

    Returns:
        images uint8 (N, channels, H, W), labels int64 (N,), the class names,
        and the file of every image.

    Raises:
        DataError naming the folder or file: no class subfolders, an empty
        class, a file that is not a readable image, mixed sizes without
        ``image_size``, an unknown class.
    """
    Image = _pil()
    root = Path(root)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found. Expected one subfolder per class "
                        "with the images inside, e.g. DIR/cat/001.jpg, DIR/dog/002.jpg.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        hint = f" (found loose images such as {', '.join(loose)})" if loose else ""
        raise DataError(f"{root}: no class subfolders{hint}. Put each class's images in a "
                        "subfolder named after the class, e.g. DIR/cat/001.jpg, DIR/dog/002.jpg.")
    names = list(found) if class_names is None else list(class_names)
    unknown = [c for c in found if c not in names]
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(unknown)} are not among the "
                        f"training classes {', '.join(names)}; labels would be out of range. "
                        "Use the same class subfolders for training and testing.")
    mode = "L" if channels == 1 else "RGB"
    images, labels, files = [], [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue          # a test folder may lack a training class
        paths = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise DataError(f"{folder}: empty class folder (no files ending in "
                            f"{', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder.")
        for path in paths:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    if prepare is not None:
                        img = prepare(img)
                    elif image_size is not None and img.size != (image_size, image_size):
                        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DataError(f"{path}: not a readable image ({exc}). Remove or replace "
                                "the file.") from exc
            if image_size is None and images and arr.shape[:2] != images[0].shape[1:]:
                raise DataError(
                    f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from "
                    f"{files[0]} ({images[0].shape[-1]}x{images[0].shape[-2]}). Pass an image "
                    "size (--image-size N) to resize every image to N x N.")
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # (C, H, W)
            labels.append(label)
            files.append(path)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names, files
