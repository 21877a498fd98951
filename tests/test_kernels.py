"""Every fast kernel in minivit/kernels/ equals the reference it replaces, and
the switch MINIVIT_KERNELS picks one or the other for every layer.

float32 and float64, with edge values (large |x|, zeros of both signs, NaN):
each kernel against the plain expression or the layer's reference lines.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import randn, randomize_parameters

from minivit import backend, kernels
from minivit.kernels import reductions
from minivit.layers import GELU, LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# -- the switch -----------------------------------------------------------------
def test_the_switch_defaults_to_fast_and_flips_back():
    assert kernels.MODES == ("fast", "reference")
    assert kernels.mode() == "fast" and kernels.enabled()
    with kernels.using("reference"):
        assert kernels.mode() == "reference" and not kernels.enabled()
        with kernels.using("fast"):
            assert kernels.enabled()
        assert not kernels.enabled()
    assert kernels.enabled()
    with pytest.raises(ValueError, match="one of fast, reference"):
        kernels.use("quick")
    assert kernels.enabled()


def test_a_bad_environment_value_names_the_valid_ones():
    env = dict(os.environ, MINIVIT_KERNELS="slow", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", "import minivit"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "MINIVIT_KERNELS must be one of fast, reference" in proc.stderr
    assert "'slow'" in proc.stderr
    env["MINIVIT_KERNELS"] = " Reference "
    proc = subprocess.run([sys.executable, "-c",
                           "from minivit import kernels; print(kernels.mode())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reference"


def test_reference_mode_runs_none_of_the_kernels(monkeypatch):
    """With the switch on reference, a whole training step calls nothing in
    minivit/kernels/ (each kernel module's public functions replaced by traps)."""
    from minivit.loss import cross_entropy
    from minivit.vit import ViT

    def trap(*args, **kwargs):
        raise AssertionError("a fast kernel ran in reference mode")

    for module in (kernels.attention, kernels.gelu, kernels.layernorm, kernels.linear,
                   kernels.reductions):
        for name in ("forward", "backward", "sum_rows", "sum_last", "mean_last", "dot_last"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, trap)
    with backend.using("numpy", dtype="float32"), kernels.using("reference"):
        for gelu in ("tanh", "exact"):
            if gelu == "exact":
                pytest.importorskip("scipy")
            model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                        depth=2, heads=2, mlp_dim=16, gelu=gelu, pool="cls", seed=0)
            loss, dlogits = cross_entropy(model.forward(randn(3, 1, 8, 8)), np.arange(3))
            model.backward(dlogits)
            assert np.isfinite(loss)
    with kernels.using("fast"), pytest.raises(AssertionError, match="fast kernel ran"):
        model.forward(randn(3, 1, 8, 8))


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
        for mode in kernels.MODES:
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [2, 40])              # few rows: one call; many: threads
def test_linear_and_patch_embed_fast_equal_reference(dtype, rows, monkeypatch):
    from minivit.parallel import threads
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
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


# -- whole model: gradient check and a short training, in both modes -------------
@pytest.mark.parametrize("mode", kernels.MODES)
def test_whole_model_gradcheck_in_both_modes(mode):
    from minivit.gradcheck import assert_gradients_ok, check_module
    from minivit.vit import ViT
    with backend.using("numpy", dtype="float64"), kernels.using(mode):
        model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                    heads=2, mlp_dim=12, pool="cls", seed=0)
        randomize_parameters(model, scale=0.4)
        x = np.random.default_rng(0).standard_normal((3, 2, 8, 8))
        assert_gradients_ok(check_module(model, x, samples=20))
        assert_gradients_ok(check_module(model, x, mode="direction", seed=1))


def _short_training(mode, steps=12):
    from minivit.loss import cross_entropy
    from minivit.optim import AdamW, param_groups_weight_decay
    from minivit.parallel.replicas import Replicas
    from minivit.vit import ViT
    with backend.using("numpy", dtype="float32"), kernels.using(mode):
        backend.seed(0)
        model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=2,
                    heads=2, mlp_dim=32, dropout=0.1, seed=0)
        optimizer = AdamW(param_groups_weight_decay(model, 0.05), lr=3e-3)
        replicas = Replicas(model, threads=2, processes=False)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 4, 16)
        losses = []
        for _ in range(steps):
            model.zero_grad()
            loss, _ = replicas.loss_and_grads(x, y, cross_entropy)
            optimizer.step()
            losses.append(loss)
        return losses


def test_a_short_training_learns_the_same_in_both_modes():
    fast, reference = _short_training("fast"), _short_training("reference")
    for losses in (fast, reference):
        assert all(np.isfinite(losses))
        assert losses[-1] < 0.8 * losses[0]           # it learns (one fixed batch)
    # the same function: the same losses up to float32 rounding, step after step
    np.testing.assert_allclose(reference, fast, rtol=2e-3)
