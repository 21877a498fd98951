"""Blocks of W images in SIMD lanes: copies into and out of that layout, and products in it.

Replaces, for the lane kernels of ``minivit/kernels/fused/attention.py``,
NumPy's stacked matmul ``x @ y`` over a batch of small matrices (one BLAS
call per image and head) and the transposes around it. A block of W images
holds each value as a run of W lanes, one per image: ``to_lanes`` turns
x (B, H, R, C) into xl (nb, H, R, C W) with xl[n, h, r, c W + i] =
x[n W + i, h, r, c] (lanes past the batch's end zero), ``from_lanes`` the
reverse for the real images; both move W x W tiles through registers
(``simd.transpose8``) where the rows allow. ``product`` is the matrix
product over such runs, every multiply-add W images at once.
"""

from __future__ import annotations

from numba import njit

from minivit.kernels.fused.simd import W, add, fma, load, mul, splat, store, transpose8

_KW = dict(cache=True, error_model="numpy", nogil=True)


@njit(**_KW)
def product(X, xo, xr, xm, Y, yo, ym, yc, O, oo, o_r, oc, R, M, C, scale):
    """O[r, c] = scale * sum_m X[r, m] Y[m, c] for r < R, c < C, each entry a
    run of W lanes: X[r, m] at X[xo + r xr + m xm], Y[m, c] at
    Y[yo + m ym + c yc], O[r, c] at O[oo + r o_r + c oc] (flat arrays)."""
    zero = splat(X.dtype.type(0.0))
    sc = splat(X.dtype.type(scale))
    for r in range(R):
        x0 = xo + r * xr
        c = 0
        while c + 8 <= C:                   # eight columns: eight independent sums
            s0 = zero; s1 = zero; s2 = zero; s3 = zero
            s4 = zero; s5 = zero; s6 = zero; s7 = zero
            for m in range(M):
                x = load(X, x0 + m * xm)
                y = yo + m * ym + c * yc
                s0 = fma(x, load(Y, y), s0)
                s1 = fma(x, load(Y, y + yc), s1)
                s2 = fma(x, load(Y, y + 2 * yc), s2)
                s3 = fma(x, load(Y, y + 3 * yc), s3)
                s4 = fma(x, load(Y, y + 4 * yc), s4)
                s5 = fma(x, load(Y, y + 5 * yc), s5)
                s6 = fma(x, load(Y, y + 6 * yc), s6)
                s7 = fma(x, load(Y, y + 7 * yc), s7)
            o = oo + r * o_r + c * oc
            store(O, o, mul(s0, sc))
            store(O, o + oc, mul(s1, sc))
            store(O, o + 2 * oc, mul(s2, sc))
            store(O, o + 3 * oc, mul(s3, sc))
            store(O, o + 4 * oc, mul(s4, sc))
            store(O, o + 5 * oc, mul(s5, sc))
            store(O, o + 6 * oc, mul(s6, sc))
            store(O, o + 7 * oc, mul(s7, sc))
            c += 8
        while c + 2 <= C:                   # two columns, each over even and odd m
            s0 = zero; s1 = zero; s2 = zero; s3 = zero
            m = 0
            while m + 2 <= M:
                x = load(X, x0 + m * xm)
                z = load(X, x0 + (m + 1) * xm)
                y = yo + m * ym + c * yc
                s0 = fma(x, load(Y, y), s0)
                s1 = fma(x, load(Y, y + yc), s1)
                s2 = fma(z, load(Y, y + ym), s2)
                s3 = fma(z, load(Y, y + ym + yc), s3)
                m += 2
            if m < M:
                x = load(X, x0 + m * xm)
                y = yo + m * ym + c * yc
                s0 = fma(x, load(Y, y), s0)
                s1 = fma(x, load(Y, y + yc), s1)
            o = oo + r * o_r + c * oc
            store(O, o, mul(add(s0, s2), sc))
            store(O, o + oc, mul(add(s1, s3), sc))
            c += 2
        if c < C:                           # the last odd column
            s0 = zero
            s1 = zero
            m = 0
            while m + 2 <= M:
                s0 = fma(load(X, x0 + m * xm), load(Y, yo + m * ym + c * yc), s0)
                s1 = fma(load(X, x0 + (m + 1) * xm), load(Y, yo + (m + 1) * ym + c * yc), s1)
                m += 2
            if m < M:
                s0 = fma(load(X, x0 + m * xm), load(Y, yo + m * ym + c * yc), s0)
            store(O, oo + r * o_r + c * oc, mul(add(s0, s1), sc))


@njit(**_KW)
def to_lanes(x, xl, n):
    """Block n of x (B, H, R, hd), any strides, into the first R rows of xl
    (nb, H, >= R, hd W), C-contiguous; lanes past the batch's end are zero."""
    B, H, R, hd = x.shape
    images = min(W, B - n * W)
    s0, s1, s2, s3 = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize, \
        x.strides[2] // x.itemsize, x.strides[3] // x.itemsize
    if images == W and s3 == 1 and hd % W == 0:     # W x W tiles, transposed in registers
        for h in range(H):
            for r in range(R):
                for d in range(0, hd, W):
                    transpose8(x, n * W * s0 + h * s1 + r * s2 + d, s0,
                               xl, ((n * H + h) * xl.shape[2] + r) * xl.shape[3] + d * W, W)
        return
    for lane in range(images):
        for h in range(H):
            for r in range(R):
                for d in range(hd):
                    xl[n, h, r, d * W + lane] = x[n * W + lane, h, r, d]
    for lane in range(images, W):
        for h in range(H):
            for r in range(R):
                for d in range(hd):
                    xl[n, h, r, d * W + lane] = 0


@njit(**_KW)
def from_lanes(al, x, n):
    """Block n of the first R rows of al (nb, H, >= R, C W), C-contiguous, out
    to x (B, H, R, C), any strides; real images only."""
    B, H, R, C = x.shape
    images = min(W, B - n * W)
    s0, s1, s2, s3 = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize, \
        x.strides[2] // x.itemsize, x.strides[3] // x.itemsize
    tiled = 0
    if images == W and s3 == 1:                     # W x W tiles, transposed in registers
        tiled = C - C % W
        for h in range(H):
            for r in range(R):
                for c in range(0, tiled, W):
                    transpose8(al, ((n * H + h) * al.shape[2] + r) * al.shape[3] + c * W, W,
                               x, n * W * s0 + h * s1 + r * s2 + c, s0)
    for lane in range(images):
        for h in range(H):
            for r in range(R):
                for c in range(tiled, C):
                    x[n * W + lane, h, r, c] = al[n, h, r, c * W + lane]


@njit(**_KW)
def to_lanes_blocks(x, xl, n0, n1):
    """x (B, H, R, hd) into xl (nb, H, R, hd W), blocks n0..n1."""
    for n in range(n0, n1):
        to_lanes(x, xl, n)


@njit(**_KW)
def from_lanes_blocks(al, x, n0, n1):
    """al (nb, H, R, C W) out to x (B, H, R, C), blocks n0..n1."""
    for n in range(n0, n1):
        from_lanes(al, x, n)
