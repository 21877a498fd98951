"""Parity with an independent implementation: PyTorch, float64, same weights.

The forward logits, the input gradient and every parameter gradient must
agree to ~1e-10, and weights must move between the two without a name map.
Skipped where torch is not installed.
"""

import os
import sys

import numpy as np
import pytest
from helpers import randomize_parameters

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from torch_vit import TorchViT, from_minivit  # noqa: E402

from minivit import backend  # noqa: E402
from minivit.loss import cross_entropy  # noqa: E402
from minivit.vit import ViT  # noqa: E402

pytestmark = pytest.mark.torch

CONFIGS = [
    dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=32, depth=2,
         heads=4, mlp_dim=64, pool="cls", pos_embed="learned"),
    dict(image_size=16, patch_size=4, in_channels=3, num_classes=7, dim=24, depth=3,
         heads=3, mlp_dim=40, pool="mean", pos_embed="sincos"),
    dict(image_size=12, patch_size=4, in_channels=2, num_classes=5, dim=16, depth=2,
         heads=2, mlp_dim=16, pool="cls", pos_embed="learned", stride=2),
    # the options of pretrained models: exact GELU, timm's avg pooling + fc_norm,
    # no qkv bias, Dense + tanh pre-logits, another LayerNorm eps
    dict(image_size=16, patch_size=4, in_channels=3, num_classes=6, dim=24, depth=2,
         heads=3, mlp_dim=40, pool="avg", pos_embed="learned", gelu="exact", qkv_bias=False,
         pre_logits=12, norm_eps=1e-5),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["mnist-cls-learned", "rgb-mean-sincos",
                                              "overlapping-patches", "pretrained-options"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_forward_and_every_gradient_match_pytorch(cfg, smoothing, backend_name):
    if cfg.get("gelu") == "exact":
        pytest.importorskip("scipy", reason="float64 erf comes from SciPy")
    with backend.using(backend_name, dtype="float64"):
        model = ViT(**cfg, seed=0)
        randomize_parameters(model, scale=0.3, seed=1)
        twin = from_minivit(model, torch.float64)
        rng = np.random.default_rng(2)
        B = 4
        x = rng.standard_normal((B, cfg["in_channels"], cfg["image_size"], cfg["image_size"]))
        labels = rng.integers(0, cfg["num_classes"], size=B)

        logits = model.forward(backend.to_device(x))
        loss, dlogits = cross_entropy(logits, backend.to_device(labels), smoothing)
        model.zero_grad()
        dx = model.backward(dlogits)

        xt = torch.from_numpy(x).requires_grad_(True)
        logits_t = twin(xt)
        loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels),
                                                   label_smoothing=smoothing)
        loss_t.backward()

        np.testing.assert_allclose(backend.to_numpy(logits), logits_t.detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
        assert abs(loss - loss_t.item()) < 1e-12
        np.testing.assert_allclose(backend.to_numpy(dx), xt.grad.numpy(), rtol=1e-8, atol=1e-13)
        torch_grads = dict(twin.named_parameters())
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            np.testing.assert_allclose(backend.to_numpy(p.grad),
                                       torch_grads[name].grad.numpy(),
                                       rtol=1e-8, atol=1e-13, err_msg=name)


def test_weights_round_trip_through_pytorch(f32):
    model = ViT(dim=16, depth=2, heads=2, mlp_dim=32, seed=0)
    twin = TorchViT(**model.config)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    back = ViT(dim=16, depth=2, heads=2, mlp_dim=32, seed=9)
    back.load_state_dict({k: v.detach() for k, v in twin.state_dict().items()})
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    twin.eval()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.to_numpy(back.eval().forward(x)), expected,
                               rtol=1e-4, atol=1e-5)
