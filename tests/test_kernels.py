"""Every fast kernel in minivit/kernels/ equals the reference it replaces:
reductions, softmax, and the fast paths of LayerNorm, Linear, PatchEmbed and
attention against the layers' reference lines (GELU and erf:
test_kernels_gelu.py; the switch itself: test_kernel_switch.py).

float32 and float64, with edge values (large |x|, zeros of both signs, NaN).
"""

import numpy as np
import pytest
from helpers import randn, randomize_parameters

from minivit import backend, kernels
from minivit.kernels import reductions
from minivit.layers import LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbed

EDGES = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 3.0, -3.0, 9.0, -9.0, 50.0, -50.0,
         1e4, -1e4, 1e12, -1e12]
DTYPES = ["float32", "float64"]
RTOL = {"float32": 3e-6, "float64": 1e-13}


def _reference(layer, x, dout=None, **forward_kwargs):
    """(y, dx) of ``layer`` on its reference lines."""
    with kernels.using("reference"):
        y = layer.forward(x, **forward_kwargs)
        dx = layer.backward(np.ones_like(y) if dout is None else dout)
    return y, dx


def _fast(layer, x, dout=None, **forward_kwargs):
    with kernels.using("fast"):
        y = layer.forward(x, **forward_kwargs)
        dx = layer.backward(np.ones_like(y) if dout is None else dout)
    return y, dx


# -- reductions -----------------------------------------------------------------
def test_reductions_match_reference(f64):
    x, y = randn(3, 5, 7, seed=1), randn(3, 5, 7, seed=2)
    xs, ys = backend.to_numpy(x), backend.to_numpy(y)
    np.testing.assert_allclose(backend.to_numpy(reductions.sum_last(x)),
                               xs.sum(-1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(reductions.mean_last(x)),
                               xs.mean(-1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(reductions.dot_last(x, y)),
                               (xs * ys).sum(-1, keepdims=True), rtol=1e-12)
    rows = x.reshape(-1, 7)
    np.testing.assert_allclose(backend.to_numpy(reductions.sum_rows(rows)),
                               xs.reshape(-1, 7).sum(0), rtol=1e-13)


def test_reductions_keep_float32(f32):
    x = randn(4, 6)
    for out in (reductions.sum_last(x), reductions.mean_last(x), reductions.dot_last(x, x),
                reductions.sum_rows(x)):
        assert out.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_at_the_edges(dtype):
    """Zeros of both signs sum to zero, large values do not overflow sooner,
    and a NaN spoils its own row (or column) only."""
    x = np.array([[0.0, -0.0, 0.0, -0.0], [1e30, -1e30, 1e30, 3.0], [1.0, np.nan, 2.0, 3.0],
                  [-1e12, -1e12, 1e12, 5.0]], dtype)
    with np.errstate(over="ignore"):              # (1e30)^2 overflows float32 both ways
        pairs = [(reductions.sum_last(x), x.sum(-1, keepdims=True)),
                 (reductions.mean_last(x), x.mean(-1, keepdims=True)),
                 (reductions.dot_last(x, x), (x * x).sum(-1, keepdims=True)),
                 (reductions.sum_rows(x), x.sum(0))]
    for fast, plain in pairs:
        assert fast.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(np.isnan(fast), np.isnan(plain))
        np.testing.assert_allclose(fast, plain, rtol=RTOL[dtype] * 10)


# -- softmax --------------------------------------------------------------------
@pytest.mark.parametrize("case", ["usual", "rows_far_apart", "one_row_far_below", "both"])
def test_fast_softmax_equals_reference(f64, case, recwarn):
    """Each score matrix shifted by its overall max, row maxima only where
    that underflows a whole row: the reference's result in every case, and
    no overflow or underflow warning on the way."""
    from minivit.kernels.attention import softmax_of_score_matrices
    from minivit.layers.attention import softmax
    xp = backend.xp
    scores = randn(3, 2, 5, 6, seed=3, scale=4.0)
    if case in ("rows_far_apart", "both"):       # the matrix max underflows the low rows
        scores[0, 1] += backend.to_device(np.arange(5.0)[:, None] * 1000.0)
    if case in ("one_row_far_below", "both"):    # so does this row's
        scores[2, 0, 3] -= 5000.0
    expected = softmax(scores.copy())
    out = xp.empty_like(scores)
    softmax_of_score_matrices(scores.copy(), out=out)
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(expected),
                               rtol=1e-12, atol=1e-300)
    assert np.isfinite(backend.to_numpy(out)).all()
    np.testing.assert_allclose(backend.to_numpy(out).sum(-1), 1.0, rtol=1e-12)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_softmax_edges(dtype):
    """float32 and float64: large scores, zeros of both signs, a NaN (NaN out
    in its matrix, the other matrices untouched)."""
    from minivit.kernels.attention import softmax_of_score_matrices
    from minivit.layers.attention import softmax
    scores = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(dtype)
    scores[0, 0] = 0.0
    scores[0, 0, 1] = -0.0
    scores[0, 1] *= 1e4
    scores[1, 2, 0, 0] = 1e30 if dtype == "float64" else 1e30
    scores[1, 2, 3] = -1e30
    scores[1, 1, 2, 2] = np.nan
    expected = softmax(scores.copy())
    out = np.empty_like(scores)
    with np.errstate(invalid="ignore"):
        softmax_of_score_matrices(scores.copy(), out=out)
    assert out.dtype == np.dtype(dtype)
    spoilt = np.isnan(expected).any(axis=(-1, -2))               # the NaN's matrix
    assert spoilt.sum() == 1 and np.isnan(out[spoilt]).any()
    np.testing.assert_allclose(out[~spoilt], expected[~spoilt], rtol=RTOL[dtype] * 10,
                               atol=1e-30)


# -- LayerNorm, Linear, PatchEmbed, attention: the layers' two paths ------------
def _close(fast, ref, dtype, scale=1.0):
    tol = RTOL[dtype] * 30
    fast, ref = backend.to_numpy(fast), backend.to_numpy(ref)
    assert fast.dtype == ref.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(ref))
    np.testing.assert_allclose(fast, ref, rtol=tol, atol=tol * scale)


def _grads(layer):
    return {n: p.grad.copy() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_fast_equals_reference(dtype):
    """Rows of zeros (of both signs), of huge and of tiny values, a NaN row."""
    with backend.using("numpy", dtype=dtype):
        layer = LayerNorm(6)
        randomize_parameters(layer)
        x = randn(5, 3, 6, seed=1, scale=2.0) + 1.0
        x[0, 0] = 0.0
        x[0, 1] = -0.0
        x[1, 0] *= 1e15 if dtype == "float64" else 1e15
        x[1, 1] *= 1e-20
        x[2, 2, 3] = np.nan
        dout = randn(5, 3, 6, seed=2)
        results = []
        for run in (_reference, _fast):
            layer.zero_grad()
            with np.errstate(invalid="ignore"):
                y, dx = run(layer, x, dout)
            results.append((y, dx, _grads(layer)))
    (y0, dx0, g0), (y1, dx1, g1) = results
    _close(y1, y0, dtype)
    _close(dx1, dx0, dtype, scale=1e3)       # rstd = 1/sqrt(eps) for the zero rows
    for name in g0:
        _close(g1[name], g0[name], dtype, scale=10)
    assert np.isnan(y1[2, 2]).all() and np.isfinite(y1[2, :2]).all()


# Each of kernels/linear.py's ways to run a product: (rows, large, minivit's
# threads just ran) -> (shared out over rows, on one BLAS thread).
LINEAR_PATHS = {
    "large, many rows": ((40, True, False), (True, False)),
    "large, few rows": ((2, True, True), (False, False)),
    "small, few rows, after threads": ((2, False, True), (False, True)),
    "small, few rows": ((2, False, False), (False, False)),
    "small, many rows": ((40, False, True), (False, False)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", LINEAR_PATHS)
def test_linear_and_patch_embed_fast_equal_reference(dtype, path, monkeypatch):
    from minivit.kernels import linear
    from minivit.parallel import threads
    (rows, large, recent), expected = LINEAR_PATHS[path]
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(linear, "LARGE_PRODUCT", 0 if large else 1 << 62)
    monkeypatch.setattr(threads, "ran_recently", lambda: recent)
    taken = {"shares": 0, "one thread": 0}
    shares, blas_threads = threads.parallel_shares, threads.blas_threads

    def counting_shares(*args):
        taken["shares"] += 1
        return shares(*args)

    def counting_blas_threads(n):           # the product's own, not parallel_shares'
        taken["one thread"] += n == 1 and not taken["shares"]
        return blas_threads(n)
    monkeypatch.setattr(threads, "parallel_shares", counting_shares)
    monkeypatch.setattr(threads, "blas_threads", counting_blas_threads)
    with backend.using("numpy", dtype=dtype), kernels.using("numpy"):
        y = linear.forward(randn(rows, 6, seed=1), randn(5, 6, seed=2), randn(5, seed=3))
    assert y.shape == (rows, 5)
    assert (taken["shares"] > 0, taken["one thread"] > 0) == expected
    with backend.using("numpy", dtype=dtype):
        layer = Linear(6, 5)
        randomize_parameters(layer)
        x = randn(rows, 6, seed=3)
        x[0, :3] = [0.0, -0.0, 1e30 if dtype == "float64" else 1e30]
        x[1, 1] = np.nan
        dout = randn(rows, 5, seed=4)
        patch = PatchEmbed(8, 4, 2, 5)
        randomize_parameters(patch)
        images = randn(3, 2, 8, 8, seed=5)
        dtokens = randn(3, 4, 5, seed=6)
        for module, inp, grad in ((layer, x, dout), (patch, images, dtokens)):
            results = []
            for run in (_reference, _fast):
                module.zero_grad()
                y, dx = run(module, inp, grad)
                results.append((y, dx, _grads(module)))
            (y0, dx0, g0), (y1, dx1, g1) = results
            _close(y1, y0, dtype, scale=1e31)
            _close(dx1, dx0, dtype)
            for name in g0:
                fast, ref = g1[name], g0[name]
                finite = np.isfinite(ref)
                np.testing.assert_array_equal(finite, np.isfinite(fast))
                np.testing.assert_allclose(fast[finite], ref[finite], rtol=RTOL[dtype] * 30,
                                           atol=RTOL[dtype] * 30 * max(1.0, abs(ref[finite]).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_queries", [None, 1])
def test_attention_fast_equals_reference(dtype, num_queries, monkeypatch):
    """Both passes, all queries or the first only, with a score matrix of
    huge scores and one of zeros."""
    from minivit.parallel import threads
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    with backend.using("numpy", dtype=dtype):
        layer = MultiHeadSelfAttention(8, 2)
        randomize_parameters(layer, scale=0.5)
        x = randn(4, 5, 8, seed=7)
        x[1] *= 30.0                                  # large scores: a softmax near one-hot
        x[2] = 0.0
        x[3, 0] = -0.0
        Q = 5 if num_queries is None else num_queries
        dout = randn(4, Q, 8, seed=8)
        results = []
        for run in (_reference, _fast):
            layer.zero_grad()
            y, dx = run(layer, x, dout, num_queries=num_queries)
            results.append((y, dx, layer.attn_probs, _grads(layer)))
    (y0, dx0, a0, g0), (y1, dx1, a1, g1) = results
    _close(y1, y0, dtype, scale=10)
    _close(a1, a0, dtype)
    _close(dx1, dx0, dtype, scale=100)
    for name in g0:
        _close(g1[name], g0[name], dtype, scale=100)
