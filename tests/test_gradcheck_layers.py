"""Every layer's backward against central finite differences, in float64.

For each layer: the input and every parameter, element by element, with a
random mixed-sign upstream gradient; relative error <= 1e-6. Each check also
runs along a random direction over all tensors at once. Runs on NumPy and,
where present, CuPy; and every check twice, once on the fast kernels
(``minivit/kernels/``) and once on the layers' reference code.
"""

import numpy as np
import pytest
from helpers import KERNEL_MODES, FirstTokens, randn, randomize_parameters

from minivit import backend, kernels
from minivit.gradcheck import assert_gradients_ok, check_module
from minivit.layers import (GELU, MLP, Block, Dropout, LayerNorm, Linear,
                            MultiHeadSelfAttention, PatchEmbed, Tanh)
from minivit.vit import ViT

TOL = 1e-6


@pytest.fixture(autouse=True, params=KERNEL_MODES)
def kernel_mode(request):
    """Each test runs on the fast kernels and on the reference code
    (``MINIVIT_KERNELS=fast`` / ``reference``), and where numba is installed
    also on the NumPy kernels (``numpy``; ``fast`` then runs the fused ones)."""
    with kernels.using(request.param):
        yield request.param


def _check_both_modes(module, x):
    report = check_module(module, x, tol=TOL)
    assert_gradients_ok(report)
    # Every trainable parameter and the input must have been checked.
    expected = {"input"} | {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(report.per_tensor) == expected
    for seed in (1, 2):
        assert_gradients_ok(check_module(module, x, mode="direction", seed=seed, tol=TOL))
    return report


def test_linear(f64):
    layer = Linear(5, 4)
    randomize_parameters(layer)
    _check_both_modes(layer, randn(2, 3, 5, seed=1))


def test_linear_without_bias_2d_input(f64):
    layer = Linear(6, 3, bias=False)
    randomize_parameters(layer)
    report = _check_both_modes(layer, randn(4, 6, seed=2))
    assert set(report.per_tensor) == {"input", "weight"}


def test_layernorm(f64):
    layer = LayerNorm(7)
    randomize_parameters(layer)
    _check_both_modes(layer, randn(2, 3, 7, seed=3, scale=3.0) + 1.5)


def test_gelu(f64):
    _check_both_modes(GELU(), randn(4, 9, seed=4, scale=2.5))


def test_gelu_exact(f64):
    pytest.importorskip("scipy", reason="the exact GELU needs SciPy (the [pretrained] extra)")
    _check_both_modes(GELU(approximate="none"), randn(4, 9, seed=4, scale=2.5))
    _check_both_modes(GELU(approximate="none").eval(), randn(3, 7, seed=5, scale=3.0))


def test_tanh(f64):
    _check_both_modes(Tanh(), randn(4, 9, seed=6, scale=1.5))


def test_layernorm_eps_of_timm_and_a_large_one(f64):
    for eps in (1e-6, 0.3):
        layer = LayerNorm(7, eps=eps)
        randomize_parameters(layer)
        _check_both_modes(layer, randn(2, 3, 7, seed=3, scale=0.5))


def test_dropout_with_fixed_mask(f64):
    layer = Dropout(0.4)
    x = randn(3, 8, seed=5)
    _check_both_modes(layer, x)
    # The mask really dropped something and scaled the rest by 1/(1-p).
    backend.seed(0)
    y = backend.to_numpy(layer.forward(x))
    xs = backend.to_numpy(x)
    dropped = y == 0
    assert 0 < dropped.sum() < y.size
    np.testing.assert_allclose(y[~dropped], xs[~dropped] / 0.6, rtol=1e-12)


def test_dropout_eval_is_identity(f64):
    layer = Dropout(0.5).eval()
    x = randn(3, 8, seed=6)
    assert layer.forward(x) is x
    dout = randn(3, 8, seed=7)
    assert layer.backward(dout) is dout


@pytest.mark.parametrize("stride", [None, 2, 3])
def test_patch_embed(f64, stride):
    # stride None: tiling patches; 2 and 3: overlapping patches (col2im adds overlaps).
    layer = PatchEmbed(image_size=8, patch_size=4, in_channels=2, dim=5, stride=stride)
    randomize_parameters(layer)
    _check_both_modes(layer, randn(2, 2, 8, 8, seed=8))


@pytest.mark.parametrize("heads", [1, 3])
def test_attention(f64, heads):
    layer = MultiHeadSelfAttention(dim=12, heads=heads)
    randomize_parameters(layer, scale=0.4)
    _check_both_modes(layer, randn(2, 5, 12, seed=9))


@pytest.mark.parametrize("num_queries", [1, 3])
def test_attention_for_the_first_tokens_only(f64, num_queries):
    layer = MultiHeadSelfAttention(dim=12, heads=3)
    randomize_parameters(layer, scale=0.4)
    _check_both_modes(FirstTokens(layer, num_queries), randn(2, 5, 12, seed=19))


@pytest.mark.parametrize("num_queries", [1, 2])
def test_block_for_the_first_tokens_only(f64, num_queries):
    layer = Block(dim=8, heads=2, mlp_dim=16, dropout=0.1, attn_dropout=0.1)
    randomize_parameters(layer, scale=0.4)
    _check_both_modes(FirstTokens(layer, num_queries), randn(2, 5, 8, seed=20))


def test_block_first_tokens_equal_the_full_block_rows(f64):
    """Q tokens' outputs and all gradients equal the full block's with dy zero
    on the other rows (no dropout: masks of other shapes draw other numbers)."""
    block = Block(dim=8, heads=2, mlp_dim=16)
    randomize_parameters(block, scale=0.4)
    x, dy = randn(3, 6, 8, seed=21), randn(3, 2, 8, seed=22)
    y_full = block.forward(x)
    dy_full = backend.xp.zeros_like(y_full)
    dy_full[:, :2] = dy
    block.zero_grad()
    dx_full = block.backward(dy_full)
    grads_full = {n: p.grad.copy() for n, p in block.named_parameters()}
    y = block.forward(x, num_queries=2)
    block.zero_grad()
    dx = block.backward(dy)
    np.testing.assert_allclose(backend.to_numpy(y), backend.to_numpy(y_full[:, :2]),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(dx), backend.to_numpy(dx_full),
                               rtol=1e-12, atol=1e-14)
    for name, p in block.named_parameters():
        np.testing.assert_allclose(backend.to_numpy(p.grad), backend.to_numpy(grads_full[name]),
                                   rtol=1e-12, atol=1e-14, err_msg=name)


def test_class_token_vit_computes_one_token_in_its_last_block_with_full_results(f64):
    model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=12, pool="cls")
    randomize_parameters(model, scale=0.4)
    x, dlogits = randn(3, 2, 8, 8, seed=23), randn(3, 3, seed=24)

    def run():
        logits = model.forward(x)
        model.zero_grad()
        model.backward(dlogits)
        return logits, {n: p.grad.copy() for n, p in model.named_parameters()}

    logits, grads = run()
    assert model.blocks[-1].attn.attn_probs.shape == (3, 2, 1, 5)   # the shortcut ran
    last = model.blocks[-1]
    last.forward = lambda z, num_queries=None: Block.forward(last, z)   # every token
    logits_full, grads_full = run()
    assert last.attn.attn_probs.shape == (3, 2, 5, 5)
    np.testing.assert_allclose(backend.to_numpy(logits), backend.to_numpy(logits_full),
                               rtol=1e-12, atol=1e-14)
    for name in grads:
        np.testing.assert_allclose(backend.to_numpy(grads[name]),
                                   backend.to_numpy(grads_full[name]),
                                   rtol=1e-11, atol=1e-14, err_msg=name)


def test_attention_num_queries_out_of_range_is_refused(f64):
    layer = MultiHeadSelfAttention(dim=8, heads=2)
    with pytest.raises(ValueError, match="num_queries must be between 1 and the 4 tokens"):
        layer.forward(randn(1, 4, 8), num_queries=5)


def test_attention_with_dropout(f64):
    layer = MultiHeadSelfAttention(dim=8, heads=2, attn_dropout=0.25, proj_dropout=0.1)
    randomize_parameters(layer, scale=0.4)
    _check_both_modes(layer, randn(2, 4, 8, seed=10))


def test_mlp(f64):
    layer = MLP(6, 10, dropout=0.2)
    randomize_parameters(layer)
    _check_both_modes(layer, randn(2, 3, 6, seed=11))


def test_block(f64):
    layer = Block(dim=8, heads=2, mlp_dim=16, dropout=0.1, attn_dropout=0.1)
    randomize_parameters(layer, scale=0.4)
    _check_both_modes(layer, randn(2, 5, 8, seed=12))


@pytest.mark.parametrize("pool,pos_embed", [("cls", "learned"), ("mean", "learned"),
                                            ("cls", "sincos"), ("mean", "sincos")])
def test_vit_whole_model(f64, pool, pos_embed):
    model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=12, dropout=0.1, attn_dropout=0.1, pool=pool,
                pos_embed=pos_embed)
    randomize_parameters(model, scale=0.4)
    report = _check_both_modes(model, randn(2, 2, 8, 8, seed=13))
    assert ("pos_embed" in report.per_tensor) == (pos_embed == "learned")


@pytest.mark.parametrize("pool,pre_logits,qkv_bias", [("avg", None, True), ("cls", 6, False),
                                                     ("avg", 5, False)])
def test_vit_pretrained_options(f64, pool, pre_logits, qkv_bias):
    """The options of timm's and Google's models: exact GELU, LayerNorm eps,
    fc_norm pooling, pre-logits, no qkv bias."""
    pytest.importorskip("scipy", reason="the exact GELU needs SciPy (the [pretrained] extra)")
    model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=12, pool=pool, gelu="exact", norm_eps=1e-5,
                qkv_bias=qkv_bias, pre_logits=pre_logits)
    randomize_parameters(model, scale=0.4)
    report = _check_both_modes(model, randn(2, 2, 8, 8, seed=13))
    assert ("fc_norm.weight" in report.per_tensor) == (pool == "avg")
    assert ("norm.weight" in report.per_tensor) == (pool != "avg")
    assert ("pre_logits.fc.weight" in report.per_tensor) == bool(pre_logits)
    assert ("blocks.0.attn.qkv.bias" in report.per_tensor) == qkv_bias


def test_vit_overlapping_patches(f64):
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=8, depth=2,
                heads=2, mlp_dim=8, stride=2)
    randomize_parameters(model, scale=0.4)
    _check_both_modes(model, randn(2, 1, 8, 8, seed=14))


def test_vit_default_init_direction(f64):
    """The MNIST-sized model as initialised for training, checked along random
    directions (too many elements for an element-wise check in a unit test)
    and on a sample of elements. timm's initialisation leaves the CLS row with
    a tiny variance, where LayerNorm curves sharply, so the element-wise part
    uses the fourth-order difference."""
    model = ViT(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=32,
                depth=2, heads=4, mlp_dim=64, seed=0)
    x = randn(3, 1, 28, 28, seed=15)
    for seed in range(3):
        assert_gradients_ok(check_module(model, x, mode="direction", seed=seed, tol=TOL))
    assert_gradients_ok(check_module(model, x, samples=20, tol=TOL, order=4))


def test_small_vit_default_init_every_element(f64):
    """Every element of a small ViT at timm's initialisation (order 4)."""
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=16, seed=0)
    report = check_module(model, randn(2, 1, 8, 8, seed=16), tol=TOL, order=4)
    assert_gradients_ok(report)
    assert set(report.per_tensor) == {"input"} | {n for n, _ in model.named_parameters()}


def test_gelu_backward_after_eval_forward(f64):
    """In eval mode the forward keeps x rather than dy/dx; backward still works
    (input gradients of a model in eval mode, e.g. for saliency maps)."""
    layer = GELU().eval()
    _check_both_modes(layer, randn(4, 9, seed=17, scale=2.5))
