"""The gradient checker itself: it must catch a wrong backward, not only pass."""

import numpy as np
import pytest
from helpers import randn, randomize_parameters

from minivit import backend
from minivit.gradcheck import assert_gradients_ok, check_gradients, check_module
from minivit.layers import LayerNorm, Linear, MultiHeadSelfAttention
from minivit.loss import cross_entropy


class WrongLayerNorm(LayerNorm):
    """Forgets the path through the variance: a classic LayerNorm bug that an
    all-ones upstream gradient does not reveal."""

    def backward(self, dout):
        xhat, rstd = self._saved()                      # (R, D), (R, 1)
        dout_rows = dout.reshape(-1, self.dim)
        self.weight.grad += (dout_rows * xhat).sum(axis=0)
        self.bias.grad += dout_rows.sum(axis=0)
        dxhat = dout_rows * self.weight.data
        return (rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))).reshape(dout.shape)


class WrongAttention(MultiHeadSelfAttention):
    """Drops the 1/sqrt(hd) scale in the backward of the scores."""

    def backward(self, dout):
        scale, self.scale = self.scale, 1.0
        try:
            return super().backward(dout)
        finally:
            self.scale = scale


class WrongBiasLinear(Linear):
    """Overwrites the bias gradient instead of accumulating it."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.bias.grad[...] = 0.0
        return dx


@pytest.mark.parametrize("broken", [WrongLayerNorm(6), WrongAttention(8, 2),
                                    WrongBiasLinear(5, 3)],
                         ids=["layernorm-variance", "attention-scale", "linear-bias"])
def test_checker_catches_wrong_backward(broken, backend_name):
    with backend.using(backend_name, dtype="float64"):
        # Rebuild on the active backend with the same class and arguments.
        cls = type(broken)
        layer = {WrongLayerNorm: lambda: cls(6), WrongAttention: lambda: cls(8, 2),
                 WrongBiasLinear: lambda: cls(5, 3)}[cls]()
        randomize_parameters(layer)
        x = randn(2, 4, layer.weight.shape[-1] if hasattr(layer, "weight") else 8, seed=3)
        for mode in ("elementwise", "direction"):
            report = check_module(layer, x, mode=mode)
            assert not report.ok, f"{mode} check missed the bug: {report}"
            assert report.max_rel_error > 1e-3
            with pytest.raises(AssertionError, match="FAILED"):
                assert_gradients_ok(report)


def test_all_ones_upstream_gradient_hides_layernorm_bug(f64):
    """Why the checker refuses a constant dout: with dout = 1 the wrong
    LayerNorm above passes (its input gradient happens to be ~0 both ways)."""
    layer = WrongLayerNorm(6)
    x = randn(2, 4, 6, seed=4)
    with pytest.raises(ValueError, match="constant upstream"):
        check_module(layer, x, dout=backend.xp.ones((2, 4, 6)))
    # Compared by hand: with dout = 1 the wrong and the right backward agree,
    # with a random dout they do not.
    right = LayerNorm(6)
    ones = backend.xp.ones((2, 4, 6))
    random_dout = randn(2, 4, 6, seed=8)
    for lay in (layer, right):
        lay.forward(x)
    np.testing.assert_allclose(backend.to_numpy(layer.backward(ones)),
                               backend.to_numpy(right.backward(ones)), atol=1e-12)
    assert not np.allclose(backend.to_numpy(layer.backward(random_dout)),
                           backend.to_numpy(right.backward(random_dout)), atol=1e-3)


def test_central_difference_orders():
    import math

    from minivit.gradcheck import central_difference

    def f(t):
        return math.exp(1.0 + t)                          # f'(0) = e

    err2 = abs(central_difference(f, 1e-2, order=2) - math.e)
    err4 = abs(central_difference(f, 1e-2, order=4) - math.e)
    assert err2 == pytest.approx(math.e * 1e-4 / 6, rel=1e-2)     # h^2 f(3) / 6
    assert err4 < 1e-9 < err2
    with pytest.raises(ValueError, match="order must be 2 or 4"):
        central_difference(f, 1e-2, order=3)


def test_report_names_tensor_and_index(f64):
    layer = WrongBiasLinear(5, 3)
    randomize_parameters(layer)
    report = check_module(layer, randn(4, 5, seed=5))
    assert report.name == "bias"
    assert len(report.index) == 1
    assert "bias" in str(report) and "FAILED" in str(report)


def test_sampled_elementwise_mode_checks_requested_count(f64):
    layer = Linear(10, 10)
    report = check_module(layer, randn(3, 10, seed=6), samples=7)
    assert report.ok
    assert report.checked == 7 * 3  # input, weight, bias


def test_float32_is_refused(f32):
    layer = Linear(3, 2)
    with pytest.raises(TypeError, match="float64"):
        check_module(layer, randn(2, 3))


def test_cross_entropy_gradient(f64):
    xp = backend.xp
    logits = randn(5, 7, seed=7, scale=3.0)
    labels = xp.asarray([0, 3, 6, 2, 2])
    for smoothing in (0.0, 0.1):
        _, dlogits = cross_entropy(logits, labels, label_smoothing=smoothing)
        report = check_gradients(lambda: cross_entropy(logits, labels, smoothing)[0],
                                 {"logits": logits}, {"logits": dlogits})
        assert_gradients_ok(report)


def test_cross_entropy_values_and_stability(f64):
    xp = backend.xp
    logits = backend.to_device(np.array([[1000.0, 0.0, -1000.0], [2.0, 2.0, 2.0]]))
    labels = xp.asarray([0, 1])
    loss, dlogits = cross_entropy(logits, labels)
    # Row 0: log p = 0 exactly; row 1: uniform, -log(1/3).
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, np.log(3) / 2, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dlogits),
                               np.array([[0, 0, 0], [1 / 3, -2 / 3, 1 / 3]]) / 2, atol=1e-15)
    # Label smoothing, PyTorch's definition: q = (1-e) onehot + e/K.
    loss_s, _ = cross_entropy(logits, labels, label_smoothing=0.3)
    row0 = 0.3 / 3 * (0 + 1000 + 2000)
    row1 = np.log(3)
    np.testing.assert_allclose(loss_s, (row0 + row1) / 2, rtol=1e-12)
