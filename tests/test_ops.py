"""The fast helpers in minivit/ops.py equal their plain NumPy references."""

import numpy as np
import pytest
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


def test_parallel_rows_splits_and_matches(monkeypatch):
    monkeypatch.setattr(ops, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "3")
    x = np.arange(70.0).reshape(7, 10)
    out = np.zeros_like(x)
    seen = []

    def kernel(a, b):
        seen.append(a.shape[0])
        np.multiply(a, 2.0, out=b)

    ops.parallel_rows(kernel, x, out)
    np.testing.assert_array_equal(out, 2 * x)
    assert len(seen) > 1 and sum(seen) == 7


def test_parallel_rows_cache_blocks_and_shares(monkeypatch):
    monkeypatch.setattr(ops, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(ops, "BLOCK_BYTES", 8 * 10 * 2)         # two float64 rows
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    x = np.arange(120.0).reshape(12, 10)
    for cache_blocks, expected in ((True, [2] * 6), (False, [6, 6])):
        seen, out = [], np.zeros_like(x)

        def kernel(a, b):
            seen.append(a.shape[0])
            np.multiply(a, 2.0, out=b)

        ops.parallel_rows(kernel, x, out, cache_blocks=cache_blocks)
        np.testing.assert_array_equal(out, 2 * x)
        assert sorted(seen) == expected


def test_linear_in_threads_equals_one_matmul(monkeypatch):
    from minivit.layers import Linear
    monkeypatch.setattr(ops, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "3")
    layer = Linear(6, 5)
    layer.bias.data[...] = np.arange(5, dtype=np.float32)
    for x in (randn(2, 7, 6), randn(1, 3, 6)):        # many rows: threads; few: one call
        np.testing.assert_allclose(layer.forward(x), x @ layer.weight.data.T + layer.bias.data,
                                   rtol=1e-6, atol=1e-6)


def test_parallel_rows_reraises_kernel_errors(monkeypatch):
    monkeypatch.setattr(ops, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")

    def kernel(a):
        raise FloatingPointError("boom")

    import pytest
    with pytest.raises(FloatingPointError, match="boom"):
        ops.parallel_rows(kernel, np.zeros((4, 2)))


def test_bad_thread_count(monkeypatch):
    import pytest
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="MINIVIT_NUM_THREADS"):
        ops.num_threads()


def test_threaded_layers_equal_serial_and_pass_gradcheck(monkeypatch):
    """The threaded kernels agree with the serial run (to rounding: SIMD loops
    may group a block's additions differently), and the whole model still
    passes the gradient check on the threaded path."""
    from helpers import randomize_parameters

    from minivit.gradcheck import assert_gradients_ok, check_module
    from minivit.vit import ViT

    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    with backend.using("numpy", dtype="float64"):
        model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                    heads=2, mlp_dim=12)
        randomize_parameters(model, scale=0.4)
        x = np.random.default_rng(0).standard_normal((5, 2, 8, 8))
        dout = np.random.default_rng(1).standard_normal((5, 3))
        results = []
        for threshold in (1 << 30, 0):            # serial, then every kernel threaded
            monkeypatch.setattr(ops, "PARALLEL_MIN_ELEMENTS", threshold)
            model.zero_grad()
            logits = model.forward(x)
            dx = model.backward(dout)
            results.append((logits, dx, [p.grad.copy() for p in model.parameters()]))
        (l0, dx0, g0), (l1, dx1, g1) = results
        np.testing.assert_allclose(l1, l0, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-14)
        for a, b in zip(g0, g1):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
        assert_gradients_ok(check_module(model, x, samples=15))


@pytest.mark.parametrize("case", ["usual", "rows_far_apart", "one_row_far_below", "both"])
def test_fast_softmax_equals_reference(f64, case, recwarn):
    """Each score matrix shifted by its overall max, row maxima only where
    that underflows a whole row: the reference's result in every case, and
    no overflow or underflow warning on the way."""
    from minivit.layers.attention import softmax, softmax_of_score_matrices
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


def test_erf_agrees_with_a_reference_to_1e_14():
    """The exact GELU's erf, in float64, against Python's math.erf (C libm),
    over the range where it is not 0 or 1 to double precision, and at the ends."""
    pytest.importorskip("scipy", reason="erf comes from SciPy (the [pretrained] extra)")
    import math

    from minivit.ops import erf
    x = np.concatenate([np.linspace(-6.5, 6.5, 20001), np.geomspace(1e-300, 6.5, 2000),
                        -np.geomspace(1e-300, 6.5, 2000), [0.0, -0.0, 30.0, -30.0]])
    got = erf(x)
    want = np.array([math.erf(v) for v in x])
    rel = np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    assert rel.max() <= 1e-14
    assert np.isnan(erf(np.array([np.nan])))[0]
    assert erf(np.float32(0.5) * np.ones(3, np.float32)).dtype == np.float32


def test_exact_gelu_matches_the_formula():
    pytest.importorskip("scipy", reason="erf comes from SciPy (the [pretrained] extra)")
    import math

    from minivit.layers import GELU
    x = np.linspace(-8, 8, 1001)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    layer = GELU(approximate="none")
    with backend.using("numpy", dtype="float64"):
        # 1 + erf(x / sqrt 2) cancels for x << 0 in both computations alike: a
        # few ulps of erf become ~1e-14 relative there
        np.testing.assert_allclose(layer.forward(x), want, rtol=1e-13, atol=1e-300)
    with pytest.raises(ValueError, match="approximate must be one of"):
        GELU(approximate="erf")


# -- fast kernels against their readable references ---------------------------
EDGES = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 3.0, -3.0, 9.0, -9.0, 50.0, -50.0,
         1e4, -1e4, 1e12, -1e12]


def _gelu_inputs(dtype):
    return np.concatenate([np.linspace(-12, 12, 24001), EDGES]).astype(dtype)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-13), ("float32", 3e-6)])
def test_gelu_through_exp_equals_the_tanh_form(dtype, rtol):
    """The sigmoid form GELU uses against the tanh lines it replaces: values
    and derivatives, over the whole range, at the edges (zeros keep their sign),
    and NaN in gives NaN out."""
    from minivit.layers.gelu import gelu_forward_kernel, gelu_sigmoid_forward_kernel
    x = _gelu_inputs(dtype)
    y_ref, d_ref, y, d = (np.empty_like(x) for _ in range(4))
    with backend.using("numpy", dtype=dtype):
        gelu_forward_kernel(x, y_ref, d_ref)
        gelu_sigmoid_forward_kernel(x, y, d)
    assert y.dtype == np.dtype(dtype) and d.dtype == np.dtype(dtype)
    # relative to the size of the values (y ~ x far out, ~0 far left)
    scale = np.maximum(np.abs(x), 1.0)
    assert (np.abs(y - y_ref) / scale).max() <= rtol
    assert np.abs(d - d_ref).max() <= rtol * 10
    np.testing.assert_array_equal(np.signbit(y[x == 0]), np.signbit(x[x == 0]))
    assert np.isfinite(y).all() and np.isfinite(d).all()
    nan = np.array([np.nan], dtype)
    out, dout = np.empty_like(nan), np.empty_like(nan)
    with backend.using("numpy", dtype=dtype):
        gelu_sigmoid_forward_kernel(nan, out, dout)
    assert np.isnan(out).all() and np.isnan(dout).all()
    with np.errstate(all="raise"):                  # no overflow warning for x << 0
        with backend.using("numpy", dtype=dtype):
            gelu_sigmoid_forward_kernel(np.array([-1e4, -100.0], dtype), out[:1].repeat(2),
                                        dout[:1].repeat(2))


def test_float32_erf_is_accurate_to_float32_rounding():
    """The rational float32 erf against SciPy's (float64), densely over the
    range where erf is not +-1 in float32, at the edges, with NaN."""
    pytest.importorskip("scipy")
    from scipy.special import erf as reference

    from minivit.ops import ERF_FLOAT32_MAX_ABS_ERROR, erf, erf_rational
    x = np.concatenate([np.linspace(-6, 6, 1_200_001), np.geomspace(1e-38, 6, 5000),
                        -np.geomspace(1e-38, 6, 5000), EDGES, [np.inf, -np.inf]])
    x = x.astype(np.float32)
    got = erf_rational(x, np.empty_like(x))
    assert got.dtype == np.float32
    error = np.abs(got.astype(np.float64) - reference(x.astype(np.float64)))
    assert error.max() < ERF_FLOAT32_MAX_ABS_ERROR
    assert np.abs(got).max() <= 1.0
    np.testing.assert_array_equal(np.signbit(got[x == 0]), np.signbit(x[x == 0]))
    # near zero, relative accuracy too: erf(x) ~ 2x/sqrt(pi)
    small = (np.abs(x) < 1e-3) & (x != 0)
    np.testing.assert_allclose(got[small], reference(x[small].astype(np.float64)), rtol=1e-6)
    assert np.isnan(erf_rational(np.array([np.nan], np.float32), np.empty(1, np.float32)))[0]
    # the public erf takes this path for float32 NumPy arrays, and SciPy's for float64
    np.testing.assert_array_equal(erf(x[:1000]), got[:1000])
    assert erf(x[:10].astype(np.float64)).dtype == np.float64


def test_float32_exact_gelu_through_a_sigmoid_is_accurate():
    """The float32 exact GELU (Phi as a fitted logistic sigmoid, no erf) against
    x Phi(x) and Phi + x phi(x) in float64, densely and at the edges; zeros
    keep their sign, NaN stays NaN, nothing overflows with a warning, and the
    layer takes this path for float32 on NumPy only."""
    pytest.importorskip("scipy")
    from scipy.special import ndtr

    from minivit.layers import GELU
    from minivit.layers.gelu import (GELU_EXACT_FLOAT32_MAX_ERROR,
                                     gelu_exact_sigmoid_forward_kernel)
    x = np.concatenate([np.linspace(-12, 12, 1_200_001), np.geomspace(1e-38, 12, 5000),
                        -np.geomspace(1e-38, 12, 5000), EDGES, [3e38, -3e38]]).astype(np.float32)
    y, d = np.empty_like(x), np.empty_like(x)
    with np.errstate(over="raise", invalid="raise", divide="raise"), \
            backend.using("numpy", dtype="float32"):
        gelu_exact_sigmoid_forward_kernel(x, y, d)
    x64 = x.astype(np.float64)
    phi = np.exp(-0.5 * np.minimum(x64 * x64, 1e4)) / np.sqrt(2 * np.pi)
    scale = np.maximum(np.abs(x64), 1.0)
    assert (np.abs(y - x64 * ndtr(x64)) / scale).max() <= GELU_EXACT_FLOAT32_MAX_ERROR
    assert np.abs(d - (ndtr(x64) + x64 * phi)).max() <= 2 * GELU_EXACT_FLOAT32_MAX_ERROR
    np.testing.assert_array_equal(np.signbit(y[x == 0]), np.signbit(x[x == 0]))
    assert np.isfinite(y).all() and np.isfinite(d).all()
    nan = np.array([np.nan], np.float32)
    out = np.empty_like(nan)
    with backend.using("numpy", dtype="float32"):
        gelu_exact_sigmoid_forward_kernel(nan, out)
    assert np.isnan(out).all()
    # y alone (inference) is the same y
    y_alone = np.empty_like(x)
    with np.errstate(over="raise", invalid="raise", divide="raise"), \
            backend.using("numpy", dtype="float32"):
        gelu_exact_sigmoid_forward_kernel(x, y_alone)
    np.testing.assert_allclose(y_alone, y, rtol=1e-6, atol=1e-37)
    with backend.using("numpy", dtype="float32"):
        layer = GELU(approximate="none").eval()
        np.testing.assert_array_equal(layer.forward(x[:1000]), y_alone[:1000])


def test_exact_gelu_float32_matches_float64():
    pytest.importorskip("scipy")
    from minivit.layers import GELU
    x64 = np.linspace(-10, 10, 40001)
    layer = GELU(approximate="none")
    with backend.using("numpy", dtype="float64"):
        want = layer.forward(x64)
    with backend.using("numpy", dtype="float32"):
        got = layer.forward(x64.astype(np.float32))
    assert got.dtype == np.float32
    assert (np.abs(got - want) / np.maximum(np.abs(x64), 1.0)).max() < 1e-6
