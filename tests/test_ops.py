"""The fast helpers in minivit/ops.py equal their plain NumPy references."""

import numpy as np
from helpers import randn

from minivit import backend, ops


def test_helpers_match_reference(f64):
    x, y = randn(3, 5, 7, seed=1), randn(3, 5, 7, seed=2)
    xs, ys = backend.to_numpy(x), backend.to_numpy(y)
    np.testing.assert_allclose(backend.to_numpy(ops.sum_last(x)), xs.sum(-1, keepdims=True),
                               rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(ops.mean_last(x)), xs.mean(-1, keepdims=True),
                               rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(ops.dot_last(x, y)),
                               (xs * ys).sum(-1, keepdims=True), rtol=1e-12)
    rows = x.reshape(-1, 7)
    np.testing.assert_allclose(backend.to_numpy(ops.sum_rows(rows)), xs.reshape(-1, 7).sum(0),
                               rtol=1e-13)


def test_helpers_keep_float32(f32):
    x = randn(4, 6)
    for out in (ops.sum_last(x), ops.mean_last(x), ops.dot_last(x, x), ops.sum_rows(x)):
        assert out.dtype == np.float32
