"""What a run is given, checked once at the start: the data and the
normalisation statistics (saved in checkpoints, so prediction tools
normalise new images the same way)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_data", "statistic"]


def check_data(data, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x float images (N, C, H, W), y int64 labels (N,); else a
    clear TypeError/ValueError naming ``what``."""
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a pair (x, y) of NumPy arrays") from None
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind != "f" or x.ndim != 4:
        raise ValueError(f"{what}: x must be float images (N, C, H, W), normalised; "
                         f"got dtype {x.dtype}, shape {x.shape} "
                         "(use minivit.data.normalize)")
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise ValueError(f"{what}: y must be integer labels of shape ({len(x)},), "
                         f"got dtype {y.dtype}, shape {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")
    return x, y.astype(np.int64)


def statistic(value):
    """A normalisation statistic as saved: a float, or a tuple of per-channel floats."""
    arr = np.asarray(value, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr.ravel())
