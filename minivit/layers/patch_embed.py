"""PatchEmbed: cut the image into P x P patches, flatten each, project to D.

This is a Conv2d with kernel P and stride S, computed as im2col + one matmul:

Forward                                     Backward (given dy = dL/dtokens)
  cols = im2col(x)        (B, N, C*P*P)       dcols = dy @ W_flat          (B, N, C*P*P)
  y    = cols @ W_flat^T + b   (B, N, D)      dW_flat += dy^T @ cols       (D, C*P*P)
                                              db += sum_{B,N} dy
                                              dx = col2im(dcols)           (B, C, H, W)

The images' gradient (the last two lines) is computed only if asked for: a
training step needs the parameters' gradients alone, as PyTorch skips it for
images that do not require grad.

im2col copies each patch into a row, flattened in (C, py, px) order, so the
weight (D, C, P, P) reshaped to (D, C*P*P) is exactly a PyTorch Conv2d weight.
col2im is its adjoint: it sends each row back to the pixels it was copied
from and, where patches overlap (S < P), adds the contributions.
The same function, faster: the bias gradient's sum as ``ones @ dy``
(``minivit/kernels/reductions.py``).
"""

from __future__ import annotations

import math

import numpy

from minivit import backend, init, kernels
from minivit.module import Module, Parameter


class PatchEmbed(Module):
    """Shapes: x (B, C, H, W) -> tokens (B, N, D), N = n_rows * n_cols with
    n_rows = (H - P) // S + 1 (and likewise for W).

    Parameters live under ``proj`` like timm (``patch_embed.proj.weight``
    (D, C, P, P), ``patch_embed.proj.bias`` (D,)), initialised like a PyTorch
    Conv2d: U(-1/sqrt(C*P*P), +1/sqrt(C*P*P)).
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int,
                 stride: int | None = None):
        super().__init__()
        stride = patch_size if stride is None else stride
        if patch_size < 1 or stride < 1:
            raise ValueError(f"patch_size and stride must be >= 1 (got {patch_size}, {stride})")
        if patch_size > image_size:
            raise ValueError(
                f"patch_size {patch_size} is larger than image_size {image_size}; "
                "choose a patch no larger than the image"
            )
        if stride == patch_size and image_size % patch_size != 0:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}; "
                "choose a patch size that divides the image (e.g. 7 or 4 for 28x28), "
                "or pass an explicit stride"
            )
        self.image_size, self.patch_size, self.stride = image_size, patch_size, stride
        self.in_channels, self.dim = in_channels, dim
        self.grid_size = (image_size - patch_size) // stride + 1
        self.num_patches = self.grid_size * self.grid_size
        self.proj = _ConvParams(in_channels, dim, patch_size)
        # Overlapping or gapped patches need explicit gather/scatter indices;
        # tiling patches (S == P) are a pure reshape.
        self._tiled = stride == patch_size
        if not self._tiled:
            self._pixel_index = _patch_pixel_index(image_size, patch_size, stride)

    # -- im2col / col2im ----------------------------------------------------
    def im2col(self, x):
        """(B, C, H, W) -> (B, N, C*P*P), each patch flattened in (C, py, px) order."""
        B, C, H, W = x.shape
        P, G = self.patch_size, self.grid_size
        if self._tiled:
            # (B, C, G, P, G, P) -> (B, G, G, C, P, P): a view, then one copy.
            patches = x.reshape(B, C, G, P, G, P).transpose(0, 2, 4, 1, 3, 5)
            return patches.reshape(B, G * G, C * P * P)
        index = self._index_on_device()                             # (N, P*P)
        gathered = x.reshape(B, C, H * W)[:, :, index]              # (B, C, N, P*P)
        return gathered.transpose(0, 2, 1, 3).reshape(B, self.num_patches, C * P * P)

    def col2im(self, cols, x_shape):
        """Adjoint of im2col: (B, N, C*P*P) -> (B, C, H, W), overlaps summed."""
        xp = backend.xp
        B, C, H, W = x_shape
        P, G = self.patch_size, self.grid_size
        if self._tiled:
            patches = cols.reshape(B, G, G, C, P, P).transpose(0, 3, 1, 4, 2, 5)
            return patches.reshape(B, C, H, W)
        index = self._index_on_device()                             # (N, P*P)
        # Scatter-add with one bincount: give every (b, c) image its own range
        # of H*W bins so that pixels shared by several patches are summed.
        per_pixel = cols.reshape(B, self.num_patches, C, P * P).transpose(0, 2, 1, 3)
        offsets = (xp.arange(B * C) * (H * W)).reshape(B, C, 1, 1)
        bins = (offsets + index).ravel()
        summed = xp.bincount(bins, weights=per_pixel.ravel(), minlength=B * C * H * W)
        return summed.astype(cols.dtype, copy=False).reshape(B, C, H, W)

    def _index_on_device(self):
        # Moved to the device once, not on every call.
        if getattr(self, "_index_cache", (None,))[0] != backend.name:
            self._index_cache = (backend.name, backend.xp.asarray(self._pixel_index))
        return self._index_cache[1]

    # -- forward / backward -------------------------------------------------
    def forward(self, x):
        self._check_input(x)
        cols = self.im2col(x)                                       # (B, N, C*P*P)
        B, N, K = cols.shape
        w_flat = self.proj.weight.data.reshape(self.dim, K)         # (D, C*P*P)
        self._keep(cols, x.shape)
        if kernels.enabled():    # the same function, faster: minivit/kernels/linear.py
            tokens = kernels.linear.forward(cols.reshape(B * N, K), w_flat, self.proj.bias.data)
        else:
            tokens = cols.reshape(B * N, K) @ w_flat.T              # one 2-D matmul (B*N, D)
            tokens += self.proj.bias.data
        return tokens.reshape(B, N, self.dim)                       # (B, N, D)

    def backward(self, dout, input_grad=True):
        """dout (B, N, D) -> dx (B, C, H, W), or None if not ``input_grad``."""
        cols, x_shape = self._saved()
        w_flat = self.proj.weight.data.reshape(self.dim, -1)
        dout_rows = dout.reshape(-1, self.dim)                      # (B*N, D)
        cols_rows = cols.reshape(-1, cols.shape[-1])                # (B*N, C*P*P)
        self.proj.weight.grad += (dout_rows.T @ cols_rows).reshape(self.proj.weight.shape)
        if kernels.enabled():    # the same function, faster: minivit/kernels/reductions.py
            self.proj.bias.grad += kernels.reductions.sum_rows(dout_rows)
        else:
            self.proj.bias.grad += dout_rows.sum(axis=0)            # db += sum_{B,N} dy
        if not input_grad:                                          # the images need none
            return None
        dcols = (dout_rows @ w_flat).reshape(cols.shape)            # (B, N, C*P*P)
        return self.col2im(dcols, x_shape)                          # (B, C, H, W)

    def _check_input(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(
                f"PatchEmbed expects images shaped (B, C, H, W), got shape "
                f"{tuple(getattr(x, 'shape', ()))}; add a channel axis for grayscale "
                "images, e.g. x[:, None]"
            )
        _, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(
                f"PatchEmbed expects {self.in_channels} channel(s), got {C} "
                f"(input shape {tuple(x.shape)})"
            )
        if H != self.image_size or W != self.image_size:
            raise ValueError(
                f"PatchEmbed expects {self.image_size}x{self.image_size} images, got "
                f"{H}x{W}; resize the input or build the model with image_size={H}"
            )

    def extra_repr(self):
        return (f"image_size={self.image_size}, patch_size={self.patch_size}, "
                f"stride={self.stride}, in_channels={self.in_channels}, dim={self.dim}")


class _ConvParams(Module):
    """Holds the Conv2d-shaped weight/bias so their names are ``proj.weight``
    and ``proj.bias`` (timm's layout). The arithmetic lives in PatchEmbed."""

    def __init__(self, in_channels, dim, patch_size):
        super().__init__()
        fan_in = in_channels * patch_size * patch_size
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(init.uniform((dim, in_channels, patch_size, patch_size), bound))
        self.bias = Parameter(init.uniform((dim,), bound))


def _patch_pixel_index(image_size: int, patch_size: int, stride: int) -> numpy.ndarray:
    """Flat pixel index (row * W + col) of every pixel of every patch: (N, P*P)."""
    grid = (image_size - patch_size) // stride + 1
    starts = numpy.arange(grid) * stride                          # top/left of each patch
    offsets = numpy.arange(patch_size)
    rows = starts[:, None, None, None] + offsets[None, None, :, None]   # (G, 1, P, 1)
    cols = starts[None, :, None, None] + offsets[None, None, None, :]   # (1, G, 1, P)
    flat = rows * image_size + cols                                     # (G, G, P, P)
    return flat.reshape(grid * grid, patch_size * patch_size)
