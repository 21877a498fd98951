"""minivit against timm itself, on the same files (optional: needs torch and timm).

Skipped where timm is not installed. CI runs it in a separate virtual
environment with ``timm==1.0.31`` (and its torch and torchvision); see ``.ci/run``.
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


def test_attention_example_gives_timms_top5_on_a_photo(tmp_path, capsys):
    """The example's preprocessing and model against timm's whole pipeline
    (resolve_data_config + create_transform + the model) on a real photo."""
    import importlib.util
    import os

    from matplotlib import cbook
    from PIL import Image
    name = "vit_tiny_patch16_224"
    model = _timm_model(name, seed=3)
    with torch.no_grad():                      # a peaked softmax: the input matters
        model.head.weight.mul_(10.0)
    path = _save(tmp_path, model)
    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    with Image.open(photo) as img, torch.no_grad():
        x = transform(img.convert("RGB"))[None]
        want = torch.softmax(model(x), dim=-1)[0].double().numpy()
    spec = importlib.util.spec_from_file_location(
        "attention_pretrained",
        os.path.join(os.path.dirname(__file__), "..", "examples", "attention_pretrained.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    got = example.main(["--weights", str(path), "--model", name, "--out", str(tmp_path)])
    top = np.argsort(want)[::-1][:5]
    assert [k for k, _ in got["top5"]] == [int(k) for k in top]
    np.testing.assert_allclose([p for _, p in got["top5"]], want[top], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["probs"], want, rtol=0, atol=1e-4)
    assert want[top[0]] > 0.2 and want[top[4]] > 0.01     # peaked, yet five real classes
    assert "using matplotlib's sample photo" in capsys.readouterr().out
