"""Data augmentation: random shifts and small rotations, one vectorised pass.

Host NumPy, applied to each training batch before it moves to the device
(``iterate_batches(..., augment=...)``).
"""

from __future__ import annotations

import numpy as np

from minivit import backend

__all__ = ["warp_affine", "augment"]


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
    fill = np.asarray(fill, dtype=images.dtype).reshape(-1, 1)   # (1 or C, 1)
    if fill.any():
        out += fill * (1 - covered)  # the outside share of each pixel
    return out.reshape(B, C, H, W)


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
    if max_shift == 0 and max_rotate_deg == 0:
        return images
    if images.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {images.shape}")
    rng = backend.host_rng() if rng is None else rng
    B = images.shape[0]
    shifts = rng.integers(-int(max_shift), int(max_shift), size=(B, 2), endpoint=True)
    angles = rng.uniform(-max_rotate_deg, max_rotate_deg, size=B)
    return warp_affine(images, shifts, angles, fill)
