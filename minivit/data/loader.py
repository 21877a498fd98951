"""From host arrays to mini-batches: normalisation, shuffling, batching.

Everything here is host NumPy: the trainer moves each batch to the active
backend with :func:`minivit.backend.to_device` as it uses it, so the whole
dataset never has to fit in GPU memory.

* :func:`normalize` turns uint8 images into standardised float (N, C, H, W);
* :func:`iterate_batches` / :class:`BatchIterator` cut shuffled mini-batches
  (optionally augmented, see :mod:`minivit.data.augment`).
"""

from __future__ import annotations

import inspect

from typing import Callable, Iterator

import numpy as np

from minivit import backend

__all__ = ["normalize", "denormalize", "channel_stats", "iterate_batches", "BatchIterator"]


def _per_channel(value, channels: int, what: str) -> np.ndarray:
    """A float or one value per channel -> array (1, C, 1, 1) for broadcasting."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or len(arr) not in (1, channels):
        raise ValueError(f"{what} must be one number or one per channel ({channels}), "
                         f"got {value!r}")
    return np.broadcast_to(arr, (channels,)).reshape(1, channels, 1, 1)


def normalize(images: np.ndarray, mean, std, dtype=np.float32) -> np.ndarray:
    """Scale uint8 images to [0, 1], standardise, and add the channel axis.

    Args:
        images: uint8 (N, H, W) (one channel) or (N, C, H, W).
        mean, std: statistics on the [0, 1] scale: one number, or one per
            channel (e.g. ``get_dataset_info(name).mean / .std``).

    Returns:
        float (N, C, H, W) of ``dtype``: ``(images / 255 - mean) / std``.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim != 4:
        raise ValueError(f"normalize expects (N, H, W) or (N, C, H, W), got shape {images.shape}")
    channels = images.shape[1]
    mean = _per_channel(mean, channels, "mean").astype(dtype)
    std = _per_channel(std, channels, "std").astype(dtype)
    # In place on one float copy: MNIST train is 47M pixels, no need for three.
    out = images.astype(dtype)
    out *= 1.0 / 255.0  # in-place ops keep the float dtype of ``out``
    out -= mean
    out /= std
    return out


def denormalize(x: np.ndarray, mean, std) -> np.ndarray:
    """Inverse of :func:`normalize` up to the uint8 rounding: values in [0, 1].

    ``x`` is (N, C, H, W) (per-channel statistics) or any shape with scalar ones.
    """
    x = np.asarray(x)
    if np.ndim(mean) or np.ndim(std):
        mean = _per_channel(mean, x.shape[1], "mean")
        std = _per_channel(std, x.shape[1], "std")
    return np.clip(x * std + mean, 0.0, 1.0)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale
    (the statistics :func:`normalize` wants, e.g. for a folder of your images)."""
    images = np.asarray(images)
    flat = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)
    # float64 sums over millions of pixels; one channel at a time keeps memory low
    mean = tuple(float(c.mean(dtype=np.float64)) / 255.0 for c in flat)
    std = tuple(float(c.std(dtype=np.float64)) / 255.0 for c in flat)
    return mean, std


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

    Takes the arguments of :func:`iterate_batches` (``shuffle``, ``rng``,
    ``augment``, ``drop_last`` by keyword).

    >>> batches = BatchIterator(x, y, 128, rng=np.random.default_rng(0))
    >>> for epoch in range(3):
    ...     for xb, yb in batches:
    ...         ...
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, **options):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        inspect.signature(iterate_batches).bind(x, y, batch_size, **options)  # TypeError if unknown
        self.x, self.y, self.batch_size, self.options = x, y, batch_size, options

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.options.get("drop_last") else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # rng resolved per epoch so a later backend.seed() is honoured.
        options = dict(self.options)
        if options.get("rng") is None:
            options["rng"] = backend.host_rng()
        return iterate_batches(self.x, self.y, self.batch_size, **options)
