"""Shapes of every layer, and the errors bad input gets."""

import numpy as np
import pytest
from helpers import randn

from minivit import backend
from minivit.layers import Block, Dropout, LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbed
from minivit.vit import ViT


def small_vit(**kw):
    cfg = dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=16, depth=2,
               heads=2, mlp_dim=32, seed=0)
    cfg.update(kw)
    return ViT(**cfg)


# -- shapes ---------------------------------------------------------------------
def test_patch_embed_shape(f32):
    layer = PatchEmbed(image_size=28, patch_size=7, in_channels=3, dim=24)
    y = layer.forward(randn(5, 3, 28, 28))
    assert y.shape == (5, 16, 24) and y.dtype == np.float32
    assert layer.backward(randn(5, 16, 24)).shape == (5, 3, 28, 28)


def test_patch_embed_overlapping_shape(f32):
    layer = PatchEmbed(image_size=28, patch_size=7, in_channels=1, dim=8, stride=3)
    assert layer.num_patches == 8 * 8
    assert layer.forward(randn(2, 1, 28, 28)).shape == (2, 64, 8)


def test_attention_shape_and_probs(f32):
    layer = MultiHeadSelfAttention(dim=32, heads=4)
    y = layer.forward(randn(3, 17, 32))
    assert y.shape == (3, 17, 32)
    probs = backend.to_numpy(layer.attn_probs)
    assert probs.shape == (3, 4, 17, 17)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    assert layer.backward(randn(3, 17, 32)).shape == (3, 17, 32)


def test_block_shape(f32):
    block = Block(dim=32, heads=4, mlp_dim=64)
    assert block.forward(randn(3, 17, 32)).shape == (3, 17, 32)
    assert block.backward(randn(3, 17, 32)).shape == (3, 17, 32)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shape_and_dtype(f32, pool):
    model = small_vit(pool=pool)
    logits = model.forward(randn(4, 1, 28, 28))
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    dx = model.backward(randn(4, 10))
    assert dx.shape == (4, 1, 28, 28) and dx.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float32, name
        assert p.grad.dtype == np.float32 and p.grad.shape == p.data.shape, name


def test_vit_float64_on_request(f64):
    model = small_vit()
    assert model.forward(randn(2, 1, 28, 28)).dtype == np.float64


# -- bad input ------------------------------------------------------------------
def test_input_not_4d(f32):
    with pytest.raises(ValueError, match=r"4-D batch \(B, C, H, W\).*\(28, 28\)"):
        small_vit().forward(randn(28, 28))


def test_wrong_channels(f32):
    with pytest.raises(ValueError, match="expects 1 channel.*got 3"):
        small_vit().forward(randn(2, 3, 28, 28))


def test_wrong_image_size(f32):
    with pytest.raises(ValueError, match="expects 28x28 images, got 32x32"):
        small_vit().forward(randn(2, 1, 32, 32))


def test_image_not_divisible_by_patch():
    with pytest.raises(ValueError, match="not divisible by patch_size 5"):
        ViT(image_size=28, patch_size=5, dim=16, depth=1, heads=2, mlp_dim=8)


def test_patch_larger_than_image():
    with pytest.raises(ValueError, match="larger than image_size"):
        ViT(image_size=8, patch_size=16, dim=16, depth=1, heads=2, mlp_dim=8)


def test_non_float_input_refused(f32):
    images = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    with pytest.raises(TypeError, match="floating-point images, got dtype uint8"):
        small_vit().forward(images)


def test_float64_input_is_cast_to_model_dtype(f32):
    model = small_vit()
    x64 = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    x32 = backend.to_device(x64.astype(np.float32))
    np.testing.assert_array_equal(backend.to_numpy(model.forward(x64)),
                                  backend.to_numpy(model.forward(x32)))


@pytest.mark.parametrize("kw,msg", [
    (dict(dim=30, heads=4), "divisible by heads"),
    (dict(pool="max"), "pool must be one of"),
    (dict(pos_embed="rope"), "pos_embed must be one of"),
    (dict(depth=0), "depth must be a positive integer"),
    (dict(dim=18, heads=2, pos_embed="sincos"), "divisible by 4"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        small_vit(**kw)


def test_attention_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"dim \(10\) must be divisible by heads \(3\)"):
        MultiHeadSelfAttention(10, 3)


def test_bad_dropout():
    with pytest.raises(ValueError, match="Dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("layer", [Linear(3, 2), LayerNorm(3), MultiHeadSelfAttention(4, 2),
                                   Block(4, 2, 8), small_vit(), Dropout(0.1)],
                         ids=lambda m: type(m).__name__)
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 3), dtype=np.float32))


def test_linear_wrong_features(f32):
    with pytest.raises(ValueError, match="last dimension 3"):
        Linear(3, 2).forward(randn(4, 5))
