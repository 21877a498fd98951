"""The fast erf and GELU kernels (minivit/kernels/erf.py, gelu.py) against the
references they replace: SciPy's erf, and the tanh and erf lines of
minivit/layers/gelu.py; float32 and float64, edge values (large |x|, zeros
of both signs, NaN)."""

import math

import numpy as np
import pytest
from helpers import KERNEL_MODES
from test_kernels import DTYPES, EDGES, _fast, _reference

from minivit import backend, kernels
from minivit.layers import GELU


# -- erf ------------------------------------------------------------------------
def test_erf_agrees_with_a_reference_to_1e_14():
    """The exact GELU's erf, in float64, against Python's math.erf (C libm),
    over the range where it is not 0 or 1 to double precision, and at the ends."""
    pytest.importorskip("scipy", reason="erf comes from SciPy (the [pretrained] extra)")
    from minivit.kernels.erf import erf as fast_erf
    from minivit.special import erf
    x = np.concatenate([np.linspace(-6.5, 6.5, 20001), np.geomspace(1e-300, 6.5, 2000),
                        -np.geomspace(1e-300, 6.5, 2000), [0.0, -0.0, 30.0, -30.0]])
    want = np.array([math.erf(v) for v in x])
    for f in (erf, fast_erf):                    # float64: the fast erf is SciPy's
        got = f(x)
        rel = np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
        assert rel.max() <= 1e-14
        assert np.isnan(f(np.array([np.nan])))[0]
        assert f(np.float32(0.5) * np.ones(3, np.float32)).dtype == np.float32


def test_exact_gelu_matches_the_formula():
    pytest.importorskip("scipy", reason="erf comes from SciPy (the [pretrained] extra)")
    x = np.linspace(-8, 8, 1001)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    layer = GELU(approximate="none")
    with backend.using("numpy", dtype="float64"):
        # 1 + erf(x / sqrt 2) cancels for x << 0 in both computations alike: a
        # few ulps of erf become ~1e-14 relative there
        for mode in KERNEL_MODES:
            with kernels.using(mode):
                np.testing.assert_allclose(layer.forward(x), want, rtol=1e-13, atol=1e-300)
    with pytest.raises(ValueError, match="approximate must be one of"):
        GELU(approximate="erf")


def test_float32_erf_is_accurate_to_float32_rounding():
    """The rational float32 erf against SciPy's (float64), densely over the
    range where erf is not +-1 in float32, at the edges, with NaN."""
    pytest.importorskip("scipy")
    from scipy.special import erf as reference

    from minivit.kernels.erf import ERF_FLOAT32_MAX_ABS_ERROR, erf, erf_rational
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
    # the fast erf takes this path for float32 NumPy arrays, and SciPy's for float64
    np.testing.assert_array_equal(erf(x[:1000]), got[:1000])
    assert erf(x[:10].astype(np.float64)).dtype == np.float64


# -- GELU -----------------------------------------------------------------------
def _gelu_inputs(dtype):
    return np.concatenate([np.linspace(-12, 12, 24001), EDGES]).astype(dtype)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-13), ("float32", 3e-6)])
def test_gelu_through_exp_equals_the_tanh_form(dtype, rtol):
    """The sigmoid form GELU runs against the tanh lines it replaces (the
    layer's reference path): values and derivatives, over the whole range, at
    the edges (zeros keep their sign), and NaN in gives NaN out."""
    from minivit.kernels.gelu import gelu_sigmoid_forward_kernel
    x = _gelu_inputs(dtype)
    y, d = np.empty_like(x), np.empty_like(x)
    with backend.using("numpy", dtype=dtype):
        y_ref, d_ref = _reference(GELU(), x)
        gelu_sigmoid_forward_kernel(x, y, d)
    assert y.dtype == np.dtype(dtype) and d.dtype == np.dtype(dtype)
    assert y_ref.dtype == np.dtype(dtype) and d_ref.dtype == np.dtype(dtype)
    # relative to the size of the values (y ~ x far out, ~0 far left)
    scale = np.maximum(np.abs(x), 1.0)
    assert (np.abs(y - y_ref) / scale).max() <= rtol
    assert np.abs(d - d_ref).max() <= rtol * 10
    np.testing.assert_array_equal(np.signbit(y[x == 0]), np.signbit(x[x == 0]))
    np.testing.assert_array_equal(np.signbit(y_ref[x == 0]), np.signbit(x[x == 0]))
    assert np.isfinite(y).all() and np.isfinite(d).all()
    nan = np.array([np.nan], dtype)
    out, dout = np.empty_like(nan), np.empty_like(nan)
    with backend.using("numpy", dtype=dtype):
        gelu_sigmoid_forward_kernel(nan, out, dout)
        assert np.isnan(_reference(GELU(), nan)[0]).all()
    assert np.isnan(out).all() and np.isnan(dout).all()
    with np.errstate(all="raise"):                  # no overflow warning for x << 0
        with backend.using("numpy", dtype=dtype):
            gelu_sigmoid_forward_kernel(np.array([-1e4, -100.0], dtype), out[:1].repeat(2),
                                        dout[:1].repeat(2))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_gelu_layer_fast_equals_reference(approximate, dtype, train):
    """The whole layer, both passes, both modes (dy/dx in the forward or in
    the backward), against its reference lines."""
    if approximate == "none":
        pytest.importorskip("scipy")
    x = np.concatenate([np.linspace(-8, 8, 4001), EDGES[:12]]).astype(dtype)
    dout = np.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    layer = GELU(approximate=approximate).train(train)
    with backend.using("numpy", dtype=dtype):
        y_ref, dx_ref = _reference(layer, x, dout)
        y, dx = _fast(layer, x, dout)
    tol = 3e-6 if dtype == "float32" else 1e-13     # as the kernel test above
    scale = np.maximum(np.abs(x), 1.0)
    assert (np.abs(y - y_ref) / scale).max() <= tol
    assert (np.abs(dx - dx_ref) / np.maximum(np.abs(dout), 1.0)).max() <= 10 * tol
    assert y.dtype == dx.dtype == np.dtype(dtype)


def test_float32_exact_gelu_through_a_sigmoid_is_accurate():
    """The float32 exact GELU (Phi as a fitted logistic sigmoid, no erf) against
    x Phi(x) and Phi + x phi(x) in float64, densely and at the edges; zeros
    keep their sign, NaN stays NaN, nothing overflows with a warning, and the
    layer takes this path for float32 on NumPy only."""
    pytest.importorskip("scipy")
    from scipy.special import ndtr

    from minivit.kernels.gelu import (GELU_EXACT_FLOAT32_MAX_ERROR,
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
    x64 = np.linspace(-10, 10, 40001)
    layer = GELU(approximate="none")
    with backend.using("numpy", dtype="float64"):
        want = layer.forward(x64)
    with backend.using("numpy", dtype="float32"):
        got = layer.forward(x64.astype(np.float32))
    assert got.dtype == np.float32
    assert (np.abs(got - want) / np.maximum(np.abs(x64), 1.0)).max() < 1e-6
