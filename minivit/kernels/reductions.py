"""Row sums, means and dot products as BLAS products.

NumPy reduces slowly over a short, contiguous last axis (LayerNorm rows of D
values, softmax rows of T scores): it runs one tiny loop per row. A
matrix-vector product with a constant vector gives the same sums through
BLAS, several times faster (``docs/performance.md``). Each function names
the plain expression it replaces; ``tests/test_kernels.py`` checks it.
"""

from __future__ import annotations

from minivit import backend


def sum_last(x):
    """Replaces ``x.sum(axis=-1, keepdims=True)``, as x @ ones.  (..., n) -> (..., 1)"""
    ones = backend.xp.ones(x.shape[-1], dtype=x.dtype)
    return (x @ ones)[..., None]


def mean_last(x):
    """Replaces ``x.mean(axis=-1, keepdims=True)``, as x @ (ones / n).  (..., n) -> (..., 1)"""
    n = x.shape[-1]
    weights = backend.xp.full(n, 1.0 / n, dtype=x.dtype)
    return (x @ weights)[..., None]


def sum_rows(x2d):
    """Replaces ``x2d.sum(axis=0)``, as ones @ x2d: a parameter gradient summed
    over all rows (tokens of every image).  (R, n) -> (n,)"""
    ones = backend.xp.ones(x2d.shape[0], dtype=x2d.dtype)
    return ones @ x2d


def dot_last(a, b):
    """Replaces ``(a * b).sum(axis=-1, keepdims=True)``, without the (..., n)
    temporary a * b: einsum multiplies and adds in one pass.
    (..., n), (..., n) -> (..., 1)"""
    return backend.xp.einsum("...i,...i->...", a, b)[..., None]
