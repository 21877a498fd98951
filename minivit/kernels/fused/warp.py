"""The augmentation's rotate-and-shift with bilinear sampling, one pass per image.

Replaces the NumPy body of ``minivit.data.augment.warp_affine``, which builds
coordinate, weight and index arrays for the whole batch, four gathers and
five passes to blend them: a dozen trips through memory for a few operations
per pixel, on one core while the training step waits for it. Here, image by
image (a share of the images on each core), each output pixel's source is
found and sampled with the same float32 coordinates and the same operations
in the same order (no fused multiply-adds), so the result is NumPy's bit for
bit. No backward: the warp is applied to data, not to anything that is
trained.
"""

from __future__ import annotations

import numpy
from numba import njit

from minivit.parallel.threads import parallel_shares


@njit(cache=True, error_model="numpy", nogil=True)
def _warp(images, shifts, cos, sin, fill, out):
    """images, out (B, C, H, W); shifts (B, 2) and cos, sin (B,) float32; fill (C,)."""
    B, C, H, W = images.shape
    f32 = numpy.float32
    cy, cx = f32((H - 1) / 2.0), f32((W - 1) / 2.0)
    top_y, top_x = f32(H + 1), f32(W + 1)           # the far edge of the padded ring
    zero = f32(0.0)
    row = W + 3
    # One image at a time, padded as NumPy pads it: one ring of fill before,
    # two after, so that a clipped coordinate and its right and lower
    # neighbours all read fill outside the image, without a test per read.
    padded = numpy.empty((C, (H + 3) * row), images.dtype)
    at = numpy.empty(H * W, numpy.intp)             # top-left source pixel, flat
    wy = numpy.empty(H * W, numpy.float32)          # weights of the lower row and
    wx = numpy.empty(H * W, numpy.float32)          # the right column
    flat_out = out.reshape(B, C, H * W)
    for b in range(B):
        k = 0
        for i in range(H):
            dy = (f32(i) - cy) - shifts[b, 0]
            for j in range(W):
                dx = (f32(j) - cx) - shifts[b, 1]
                # the inverse rotation (a source for every output pixel), +1
                # for the padded ring, clipped into it
                src_y = min(max(sin[b] * dx + cos[b] * dy + (cy + f32(1.0)), zero), top_y)
                src_x = min(max(cos[b] * dx - sin[b] * dy + (cx + f32(1.0)), zero), top_x)
                y0, x0 = int(src_y), int(src_x)     # floor: coordinates are >= 0
                at[k] = y0 * row + x0
                wy[k], wx[k] = src_y - f32(y0), src_x - f32(x0)
                k += 1
        for c in range(C):
            source, target = padded[c], flat_out[b, c]
            source[:] = fill[c]
            for i in range(H):
                source[(i + 1) * row + 1:(i + 1) * row + 1 + W] = images[b, c, i]
            for k in range(H * W):
                p = at[k]
                top = source[p] + wx[k] * (source[p + 1] - source[p])        # row y0
                bottom = source[p + row] + wx[k] * (source[p + row + 1] - source[p + row])
                target[k] = top + wy[k] * (bottom - top)                     # then along y


def warp(images, shifts, cos, sin, fill):
    """Replaces ``warp_affine``'s body: images (B, C, H, W) C-contiguous float32
    or float64; shifts (B, 2), cos and sin (B,) float32, C-contiguous; fill
    (C,) of the images' dtype. Returns the warped batch, a new array."""
    out = numpy.empty_like(images)
    # images are independent: a share of them on each core (the step waits)
    parallel_shares(lambda lo, hi: _warp(images[lo:hi], shifts[lo:hi], cos[lo:hi],
                                         sin[lo:hi], fill, out[lo:hi]), len(images))
    return out
