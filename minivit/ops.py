"""Small array helpers shared by the layers, each with its plain reference.

NumPy reduces slowly over a short, contiguous last axis (LayerNorm rows of
D = 64 values, softmax rows of T = 17 scores): it runs one tiny loop per row.
A matrix-vector product with a constant vector gives the same sums through
BLAS, several times faster. Each helper says in one line what it equals, and
``tests/test_ops.py`` checks it against that reference.
"""

from __future__ import annotations

from minivit import backend


def sum_last(x):
    """``x.sum(axis=-1, keepdims=True)``, as x @ ones.  (..., n) -> (..., 1)"""
    ones = backend.xp.ones(x.shape[-1], dtype=x.dtype)
    return (x @ ones)[..., None]


def mean_last(x):
    """``x.mean(axis=-1, keepdims=True)``, as x @ (ones / n).  (..., n) -> (..., 1)"""
    n = x.shape[-1]
    weights = backend.xp.full(n, 1.0 / n, dtype=x.dtype)
    return (x @ weights)[..., None]


def sum_rows(x2d):
    """``x2d.sum(axis=0)``, as ones @ x2d: a parameter gradient summed over all
    rows (tokens of every image).  (R, n) -> (n,)"""
    ones = backend.xp.ones(x2d.shape[0], dtype=x2d.dtype)
    return ones @ x2d


def dot_last(a, b):
    """``(a * b).sum(axis=-1, keepdims=True)`` without the (..., n) temporary
    a * b: einsum multiplies and adds in one pass.  (..., n), (..., n) -> (..., 1)"""
    return backend.xp.einsum("...i,...i->...", a, b)[..., None]
