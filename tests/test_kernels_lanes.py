"""Attention's lane kernels (minivit/kernels/fused/attention.py, lanes.py and
simd.py: W images at once in SIMD lanes) against the reference lines of
minivit/layers/attention.py, float32 and float64: shapes with a partial last
block, a head width that is and is not a multiple of W, the first queries
only, inputs with any strides, edge values (NaN, inf, huge scores, zeros of
both signs), dropout, threads; finite differences through the layer and the
whole model on this path; and the dispatch that picks it."""

import numpy as np
import pytest

pytest.importorskip("numba")

from helpers import FirstTokens, randn, randomize_parameters  # noqa: E402

from minivit import backend, kernels  # noqa: E402
from minivit.gradcheck import assert_gradients_ok, check_module  # noqa: E402
from minivit.kernels import attention as kernel_attention  # noqa: E402
from minivit.kernels.fused import attention as lane_attention  # noqa: E402
from minivit.kernels.fused import lanes, simd  # noqa: E402
from minivit.layers import MultiHeadSelfAttention  # noqa: E402
from minivit.layers.attention import softmax  # noqa: E402
from minivit.vit import ViT  # noqa: E402

DTYPES = ["float32", "float64"]
TOL = {"float32": 2e-5, "float64": 1e-12}
W = simd.W


@pytest.fixture(params=[1, 3], ids=["one-thread", "three-threads"])
def threads(request, monkeypatch):
    """Every block in one call, and the blocks shared out over three threads."""
    from minivit.parallel import threads as pool
    monkeypatch.setattr(pool, "num_threads", lambda: request.param)
    return request.param


def _close(got, want, dtype, scale=1.0):
    assert got.dtype == want.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _qkv(B, T, H, hd, Q, dtype, seed, step=1):
    """q, k, v as the layer makes them: views of one (B, T, 3, H, hd) array
    (``step=2``: every other value of a wider one, so no axis is contiguous)."""
    qkv = randn(B, T, 3, H, hd * step, seed=seed).astype(dtype)[..., ::step]
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    return q[:, :, :Q], k, v


def _reference(q, k, v, scale, do):
    """The layer's reference lines: a, o and dq, dk, dv (dq zero past Q)."""
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    a = softmax(s)
    o = a @ v
    da = do @ v.transpose(0, 1, 3, 2)
    dv = a.transpose(0, 1, 3, 2) @ do
    ds = a * (da - (da * a).sum(axis=-1, keepdims=True))
    dq = np.zeros_like(k)
    dq[:, :, :q.shape[2]] = ds @ k * scale
    dk = ds.transpose(0, 1, 3, 2) @ q * scale
    return a, o, dq, dk, dv


def _lanes(q, k, v, scale, do, dropout=lambda a: a, dropout_backward=lambda d: d):
    a, o, kept = lane_attention.forward(q, k, v, scale, dropout)
    dqkv = lane_attention.backward(do, kept, scale, dropout_backward)
    B, H, T, hd = k.shape
    dq, dk, dv = dqkv.reshape(B, T, 3, H, hd).transpose(2, 0, 3, 1, 4)
    return a, o, dq, dk, dv


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,hd,Q,step", [
    (8, 5, 2, 8, 5, 1),        # one block, tiles only
    (13, 17, 4, 16, 17, 1),    # a partial last block
    (16, 17, 4, 16, 1, 1),     # the first query only
    (9, 32, 2, 4, 32, 1),      # a head width below W: lane copies value by value
    (24, 3, 1, 24, 2, 2),      # no contiguous axis
    (8, 11, 3, 8, 11, 1),      # odd columns in every product
])
def test_lanes_attention_equals_the_reference(dtype, B, T, H, hd, Q, step, threads):
    q, k, v = _qkv(B, T, H, hd, Q, dtype, seed=B + T, step=step)
    do = randn(B, Q, H, hd, seed=3).astype(dtype).transpose(0, 2, 1, 3)   # as the layer's
    scale = hd ** -0.5
    want = _reference(q, k, v, q.dtype.type(scale), do)
    got = _lanes(q, k, v, scale, do)
    for g, w in zip(got, want):
        _close(np.ascontiguousarray(g), w, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lanes_attention_edges(dtype):
    """A NaN query makes its rows NaN (its image and head only); inf keys
    likewise; huge scores give a one-hot softmax without overflow; zeros of
    both signs a uniform one; a row far below the others keeps its own max."""
    B, T, H, hd = 11, 6, 2, 8
    q, k, v = (np.array(a) for a in _qkv(B, T, H, hd, T, dtype, seed=5))
    q[0, 0, 1, 3] = np.nan
    k[1, 1, 4, 0] = np.inf
    q[2] *= 1e4
    q[3] = 0.0
    q[4] = -0.0
    q[5, 1, 2] -= 1e3 * k[5, 1].mean(0)
    q[6] *= 1e30 if dtype == "float64" else 1e18
    do = randn(B, H, T, hd, seed=6).astype(dtype)
    with np.errstate(all="ignore"):
        want = _reference(q, k, v, q.dtype.type(hd ** -0.5), do)
        got = _lanes(q, k, v, hd ** -0.5, do)
    assert np.isnan(got[0][0, 0, 1]).all() and not np.isnan(got[0][0, 1]).any()
    for g, w in zip(got, want):
        _close(g, w, dtype, scale=1e3)


def test_lane_copies_round_trip_and_zero_the_padding():
    x = randn(11, 2, 3, 16, seed=2).astype("float32")
    xl = np.full((2, 2, 3, 16 * W), 7.0, dtype="float32")
    lanes.to_lanes_blocks(x, xl, 0, 2)
    assert (xl.reshape(2, 2, 3, 16, W)[1, ..., 3:] == 0).all()     # 3 images in block 1
    np.testing.assert_array_equal(xl.reshape(2, 2, 3, 16, W)[0].transpose(3, 0, 1, 2), x[:8])
    back = np.full_like(x, np.nan)
    lanes.from_lanes_blocks(xl, back, 0, 2)
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_register_transpose(dtype):
    from numba import njit

    @njit
    def tile(src, dst):
        simd.transpose8(src, 3, src.shape[1], dst, 5, 10)
    src = randn(8, 12, seed=1).astype(dtype)
    dst = np.zeros(100, dtype)
    tile(src, dst)
    got = np.stack([dst[5 + j * 10:5 + j * 10 + 8] for j in range(8)])
    np.testing.assert_array_equal(got, src[:, 3:11].T)
    assert np.count_nonzero(dst) == 64


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_on_the_lanes_is_the_same_function(dtype, monkeypatch):
    """With attention dropout in training, the lane path gives what the
    per-head kernels give under the same seed (the mask is drawn over the
    (B, H, Q, T) probabilities either way)."""
    with backend.using("numpy", dtype=dtype), kernels.using("fused"):
        layer = MultiHeadSelfAttention(16, 2, attn_dropout=0.3)
        randomize_parameters(layer, scale=0.5)
        x, dout = randn(9, 6, 16, seed=4), randn(9, 6, 16, seed=5)
        out = {}
        for limit in (0, kernel_attention.LANE_MAX_TOKENS):
            monkeypatch.setattr(kernel_attention, "LANE_MAX_TOKENS", limit)
            backend.seed(3)
            layer.zero_grad()
            y = layer.forward(x)
            out[limit] = (y, layer.backward(dout), layer.qkv.weight.grad.copy())
    lane, per_head = out[kernel_attention.LANE_MAX_TOKENS], out[0]
    for g, w in zip(lane, per_head):
        _close(g, w, dtype, scale=10)


def test_the_layer_takes_the_lanes_where_they_pay(lane_calls):
    """Fused kernels, a full block of images and few tokens: the lanes;
    fewer images than a block, long sequences, or other kernels: not."""
    calls = lane_calls
    layer = MultiHeadSelfAttention(8, 2)
    with backend.using("numpy", dtype="float32"):
        for B, T, mode, expected in [(W, 17, "fused", 1), (W - 1, 17, "fused", 0),
                                     (W, kernel_attention.LANE_MAX_TOKENS + 1, "fused", 0),
                                     (W, 17, "numpy", 0), (W, 17, "reference", 0)]:
            calls.clear()
            with kernels.using(mode):
                layer.forward(randn(B, T, 8))
                layer.backward(randn(B, T, 8))
            assert len(calls) == expected, (B, T, mode)


@pytest.fixture
def lane_calls(monkeypatch):
    """How many times the lane forward ran."""
    calls = []
    real = lane_attention.forward
    monkeypatch.setattr(lane_attention, "forward", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("num_queries,dropout", [(None, 0.0), (2, 0.0), (None, 0.25)])
def test_finite_differences_through_the_lanes(f64, num_queries, dropout, lane_calls):
    layer = MultiHeadSelfAttention(dim=12, heads=3, attn_dropout=dropout)
    randomize_parameters(layer, scale=0.4)
    module = FirstTokens(layer, num_queries)
    with kernels.using("fused"):
        x = randn(W + 1, 5, 12, seed=9)
        assert_gradients_ok(check_module(module, x, tol=1e-6, samples=60))
        assert_gradients_ok(check_module(module, x, mode="direction", seed=1, tol=1e-6))
    assert lane_calls


def test_finite_differences_through_a_whole_model_on_the_lanes(f64, lane_calls):
    model = ViT(image_size=8, patch_size=2, in_channels=2, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=12, pool="cls")
    randomize_parameters(model, scale=0.4)
    with kernels.using("fused"):
        x = randn(W, 2, 8, 8, seed=13)
        report = check_module(model, x, tol=1e-6, samples=40)
        assert_gradients_ok(report)
        assert {n for n, p in model.named_parameters()} <= set(report.per_tensor)
        assert_gradients_ok(check_module(model, x, mode="direction", seed=2, tol=1e-6))
    assert lane_calls
