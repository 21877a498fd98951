"""minivit against timm itself, on the same files (optional: needs torch and timm).

Skipped where timm is not installed (the CPU CI machine has no timm); run it
where it is: ``python -m pytest tests/test_timm_parity.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch and timm")
timm = pytest.importorskip("timm", reason="needs timm (pip install timm)")
pytest.importorskip("scipy", reason="the exact GELU needs SciPy")
safetensors_torch = pytest.importorskip("safetensors.torch")

from minivit.pretrained import load_pretrained, save_weights  # noqa: E402

pytestmark = pytest.mark.torch


def _timm_model(name, seed=0, **kw):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():                      # non-trivial values everywhere
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_base_patch32_224"])
def test_timm_safetensors_give_timms_logits(tmp_path, name):
    model = _timm_model(name)
    path = tmp_path / f"{name}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path))
    mine = load_pretrained(path, preset=name, log=lambda *a: None)
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mine.forward(x), want, rtol=1e-5, atol=1e-5)


def test_minivit_export_loads_into_timm_strictly(tmp_path):
    mine = load_pretrained(_save(tmp_path, _timm_model("vit_tiny_patch16_224", seed=1)),
                           preset="vit_tiny_patch16_224", log=lambda *a: None)
    out = tmp_path / "exported.safetensors"
    save_weights(mine, out)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    theirs.load_state_dict(safetensors_torch.load_file(str(out)), strict=True)
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(mine.forward(x), theirs(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_google_npz_loads_like_timms_loader(tmp_path):
    from timm.models.vision_transformer import _load_weights
    mine = load_pretrained(_save(tmp_path, _timm_model("vit_tiny_patch16_224", seed=2)),
                           preset="vit_tiny_patch16_224", log=lambda *a: None)
    npz = tmp_path / "google.npz"
    save_weights(mine, npz)                       # Google's names and layouts
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    _load_weights(theirs, str(npz))
    again = load_pretrained(npz, log=lambda *a: None)
    x = np.random.default_rng(2).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(again.forward(x), theirs(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def _save(tmp_path, model):
    path = tmp_path / "timm.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path))
    return path
