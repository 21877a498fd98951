"""Weight initialisation, the same recipes timm uses for a VisionTransformer.

Values are drawn on the host from ``backend.host_rng()`` (so ``backend.seed``
makes them reproducible on either backend) and moved to the device once.
"""

from __future__ import annotations

import numpy

from minivit import backend


def trunc_normal(shape, std=0.02, a=-2.0, b=2.0, dtype=None):
    """Normal(0, std) resampled until inside [a, b] (timm's ``trunc_normal_``).

    As in timm, ``a`` and ``b`` are absolute bounds, so for std=0.02 the
    truncation only removes draws beyond 100 standard deviations.
    """
    rng = backend.host_rng()
    out = rng.normal(0.0, std, size=shape)
    outside = (out < a) | (out > b)
    while outside.any():
        out[outside] = rng.normal(0.0, std, size=int(outside.sum()))
        outside = (out < a) | (out > b)
    return backend.to_device(out, dtype or backend.default_dtype())


def normal(shape, std, dtype=None):
    out = backend.host_rng().normal(0.0, std, size=shape)
    return backend.to_device(out, dtype or backend.default_dtype())


def uniform(shape, bound, dtype=None):
    """U(-bound, bound), PyTorch's default for Conv2d weights and biases."""
    out = backend.host_rng().uniform(-bound, bound, size=shape)
    return backend.to_device(out, dtype or backend.default_dtype())


def zeros(shape, dtype=None):
    return backend.xp.zeros(shape, dtype=dtype or backend.default_dtype())


def ones(shape, dtype=None):
    return backend.xp.ones(shape, dtype=dtype or backend.default_dtype())


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True):
    """Fixed 2-D sine-cosine position embedding (MAE / "ViT-S/16 baseline" style).

    Half of ``dim`` encodes the row, half the column; each half is
    [sin(pos * w_k), cos(pos * w_k)] with w_k = 1 / 10000^(k / (dim/4)).
    Returns a host array (1, grid_h*grid_w [+1], dim); the CLS slot is zeros.
    """
    if dim % 4 != 0:
        raise ValueError(
            f"pos_embed='sincos' needs dim divisible by 4 (got dim={dim}); "
            "choose such a dim or use pos_embed='learned'"
        )
    quarter = dim // 4
    omega = 1.0 / 10000 ** (numpy.arange(quarter, dtype=numpy.float64) / quarter)
    rows, cols = numpy.meshgrid(numpy.arange(grid_h, dtype=numpy.float64),
                                numpy.arange(grid_w, dtype=numpy.float64), indexing="ij")
    angle_w = cols.reshape(-1, 1) * omega       # (N, dim/4)
    angle_h = rows.reshape(-1, 1) * omega       # (N, dim/4)
    emb = numpy.concatenate([numpy.sin(angle_w), numpy.cos(angle_w),
                             numpy.sin(angle_h), numpy.cos(angle_h)], axis=1)
    if cls_token:
        emb = numpy.concatenate([numpy.zeros((1, dim)), emb], axis=0)
    return emb[None]
