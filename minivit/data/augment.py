"""Data augmentation: random shifts and small rotations, one vectorised pass.

Host NumPy, applied to each training batch before it moves to the device
(``iterate_batches(..., augment=...)``), while the training step waits. With
the fused kernels the warp is one compiled loop over each image's pixels, the
images shared out over the cores, the same arithmetic
(``minivit/kernels/fused/warp.py``).
"""

from __future__ import annotations

import numpy as np

from minivit import backend
from minivit.kernels.switch import fused_for

__all__ = ["warp_affine", "augment", "random_transforms"]


def warp_affine(images: np.ndarray, shifts, angles_deg=0.0, fill=0.0) -> np.ndarray:
    """Rotate each image about its centre, then shift it, in one vectorised pass.

    Args:
        images: float (B, C, H, W).
        shifts: (B, 2) or (2,) pixel offsets ``(dy, dx)``: content moves down
            by dy and right by dx.
        angles_deg: (B,) or scalar rotation angles in degrees, positive =
            counter-clockwise as displayed.
        fill: value of pixels that come from outside the image, one number
            or one per channel (0, or the
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
    # float32 coordinates: exact to ~1e-5 px on a 28 px image, and half the memory traffic
    shifts = np.broadcast_to(np.asarray(shifts, dtype=np.float32), (B, 2))
    theta = np.deg2rad(np.broadcast_to(np.asarray(angles_deg, dtype=np.float64), (B,)))
    if not (np.isfinite(shifts).all() and np.isfinite(theta).all()):
        raise ValueError("warp_affine: every shift and angle must be a finite number "
                         "(a NaN or inf has no source pixel); got "
                         f"shifts {shifts[~np.isfinite(shifts).all(axis=1)][:3].tolist()}, "
                         f"angles {np.rad2deg(theta[~np.isfinite(theta)][:3]).tolist()}")
    cos = np.cos(theta).astype(np.float32)[:, None, None]  # (B, 1, 1): broadcast over the grid
    sin = np.sin(theta).astype(np.float32)[:, None, None]
    if fused_for(images, host_data=True) and images.flags.c_contiguous:
        # the same arithmetic, one compiled loop per image: minivit/kernels/fused/warp.py
        # (the images are on the host whatever the backend: the GPU's batches too)
        from minivit.kernels.fused import warp
        fill_c = np.broadcast_to(np.asarray(fill, dtype=images.dtype).reshape(-1), (C,))
        return warp.warp(images, np.ascontiguousarray(shifts), cos.reshape(B),
                         sin.reshape(B), np.ascontiguousarray(fill_c))

    # Output grid relative to the image centre, minus the shift: (B, H, W).
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    dy = (np.arange(H, dtype=np.float32) - cy)[None, :, None] - shifts[:, 0, None, None]
    dx = (np.arange(W, dtype=np.float32) - cx)[None, None, :] - shifts[:, 1, None, None]
    # Undo the rotation to find the source coordinates. The y axis points
    # down, so this inverse map makes a positive angle turn the picture
    # counter-clockwise on screen (the PIL / torchvision convention).
    # The +1 counts in an image padded with one ring of ``fill`` (below).
    src_y = sin * dx + cos * dy + (cy + 1)
    src_x = cos * dx - sin * dy + (cx + 1)

    # Pixels outside the image have the value ``fill``: pad it around (one
    # ring before, two after, so the right/lower neighbour of a clamped
    # coordinate exists) and clamp the coordinates into the padding, so a
    # sample from anywhere outside reads fill and needs no inside test.
    padded = np.empty((B, C, H + 3, W + 3), dtype=images.dtype)
    padded[...] = np.asarray(fill, dtype=images.dtype).reshape(-1)[:, None, None]
    padded[:, :, 1:H + 1, 1:W + 1] = images
    np.clip(src_y, 0, H + 1, out=src_y)
    np.clip(src_x, 0, W + 1, out=src_x)

    # Bilinear interpolation between the four neighbouring pixels.
    y0 = src_y.astype(np.intp)                    # floor (coordinates are >= 0)
    x0 = src_x.astype(np.intp)
    wy = (src_y - y0).astype(images.dtype).reshape(B, 1, H * W)   # weight of row y0 + 1
    wx = (src_x - x0).astype(images.dtype).reshape(B, 1, H * W)   # weight of column x0 + 1
    row = W + 3
    flat = padded.reshape(B, C, -1)
    top_left = (y0 * row + x0).reshape(B, 1, H * W)

    def pixels(index):                            # gather (B, C, H*W)
        return np.take_along_axis(flat, np.broadcast_to(index, (B, C, H * W)), axis=2)

    top = pixels(top_left)
    top += wx * (pixels(top_left + 1) - top)              # along x in row y0
    bottom = pixels(top_left + row)
    bottom += wx * (pixels(top_left + row + 1) - bottom)  # along x in row y0 + 1
    top += wy * (bottom - top)                            # then along y
    return top.reshape(B, C, H, W)


def augment(
    images: np.ndarray,
    rng: np.random.Generator | None = None,
    max_shift: int = 2,
    max_rotate_deg: float = 10.0,
    fill=0.0,
) -> np.ndarray:
    """Random translation and small rotation of every image in a batch.

    Args:
        images: float (B, C, H, W), e.g. the output of :func:`normalize`.
        rng: NumPy generator; default :func:`minivit.backend.host_rng`.
        max_shift: each image moves by an integer number of pixels drawn
            uniformly from [-max_shift, max_shift], independently in y and x.
        max_rotate_deg: rotation angle drawn uniformly from
            [-max_rotate_deg, max_rotate_deg].
        fill: value for pixels shifted in from outside, one number or one
            per channel (see below).

    Returns:
        (B, C, H, W) of the input dtype. With ``max_shift=0`` and
        ``max_rotate_deg=0`` the input itself is returned, unchanged.

    The default zero padding is the background of raw [0, 1] images; after
    :func:`normalize` the background is ``-mean/std``, so pass that as
    ``fill`` (e.g. ``functools.partial(augment, fill=-MNIST_MEAN / MNIST_STD)``).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {images.shape}")
    transforms = random_transforms(len(images), rng, max_shift, max_rotate_deg)
    if transforms is None:
        return images
    return warp_affine(images, *transforms, fill)


def random_transforms(batch: int, rng: np.random.Generator | None = None,
                      max_shift: int = 2, max_rotate_deg: float = 10.0):
    """The random draws of :func:`augment` for ``batch`` images, without the warp.

    Returns ``(shifts (B, 2), angles (B,))``, or None when both maxima are 0
    (then nothing is drawn). Data-parallel ranks draw for the whole global
    batch, from the same generator, and warp only their own rows: the images
    are then augmented exactly as one process would augment them.
    """
    if max_shift == 0 and max_rotate_deg == 0:
        return None
    rng = backend.host_rng() if rng is None else rng
    shifts = rng.integers(-int(max_shift), int(max_shift), size=(batch, 2), endpoint=True)
    angles = rng.uniform(-max_rotate_deg, max_rotate_deg, size=batch)
    return shifts, angles
