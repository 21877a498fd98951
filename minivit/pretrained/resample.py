"""Resampling the grid of position embeddings to another image size, as timm does."""

from __future__ import annotations

import math

import numpy as np

from minivit.pretrained.errors import WeightsError

__all__ = ["RESAMPLE_MODES", "resample_pos_embed", "resampling_weights"]


RESAMPLE_MODES = ("bicubic", "bilinear")


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int, mode: str = "bicubic") -> np.ndarray:
    """(1, 1 + g*g, D) -> (1, 1 + new_grid^2, D): the class token's row kept,
    the g x g grid of patch positions resized in 2-D.

    ``mode="bicubic"`` (the default) is what timm's ``resample_abs_pos_embed``
    does: PyTorch's ``interpolate(mode="bicubic", antialias=True,
    align_corners=False)``; ``"bilinear"`` the same with linear weights (also
    antialiased when shrinking). Both are separable: one (new, g) matrix of
    weights per axis, ``grid_new = Wr @ grid @ Wc^T`` for every channel.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    pos_embed = np.asarray(pos_embed)
    cls, grid_rows = pos_embed[:, :1], pos_embed[0, 1:]
    old = math.isqrt(grid_rows.shape[0])
    if old * old != grid_rows.shape[0]:
        raise WeightsError(f"pos_embed has {grid_rows.shape[0]} patch positions: not a square grid")
    if old == new_grid:
        return pos_embed
    table = grid_rows.reshape(old, old, -1).astype(np.float64)          # (g, g, D)
    weights = resampling_weights(old, new_grid, mode)                    # (new, g)
    grid = np.einsum("ri,ijd,cj->rcd", weights, table, weights)          # (new, new, D)
    out = grid.reshape(1, new_grid * new_grid, -1).astype(pos_embed.dtype)
    return np.concatenate([cls, out], axis=1)


def resampling_weights(n_in: int, n_out: int, mode: str = "bicubic") -> np.ndarray:
    """(n_out, n_in) weights of antialiased 1-D resampling, pixel centres
    aligned (``align_corners=False``): output i is centred at input coordinate
    (i + 0.5) n_in / n_out; when shrinking, the kernel is widened by the
    scale (antialiasing); each row is normalised to sum 1 over the inputs it
    reaches, so borders need no padding. Bicubic uses Keys' kernel with
    a = -0.5, as PyTorch's antialiased path and PIL do."""
    def cubic(t, a=-0.5):
        t = np.abs(t)
        return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        np.where(t < 2, ((t - 5) * t + 8) * t * a - 4 * a, 0.0))

    def linear(t):
        return np.maximum(0.0, 1.0 - np.abs(t))

    kernel, radius = (cubic, 2.0) if mode == "bicubic" else (linear, 1.0)
    scale = n_in / n_out
    stretch = max(scale, 1.0)                    # widen the kernel only when shrinking
    centres = (np.arange(n_out) + 0.5) * scale                           # (n_out,)
    lo = np.maximum((centres - radius * stretch + 0.5).astype(int), 0)
    hi = np.minimum((centres + radius * stretch + 0.5).astype(int), n_in)
    j = np.arange(n_in)
    w = kernel((j[None, :] - centres[:, None] + 0.5) / stretch)
    w *= (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    return w / w.sum(axis=1, keepdims=True)

