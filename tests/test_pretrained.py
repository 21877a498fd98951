"""Pretrained ViTs: presets, Google's .npz and timm's safetensors, resampling, errors.

The Google test builds a checkpoint in Google's names and layouts in the test
itself and compares minivit's logits with an independent forward pass written
here from those arrays (einsum over the per-head kernels, as the JAX code
computes), not through minivit's converter.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

pytest.importorskip("scipy", reason="pretrained ViTs use the exact GELU: the [pretrained] extra")

from scipy.special import erf  # noqa: E402

from minivit import backend  # noqa: E402
from minivit.pretrained import (  # noqa: E402
    PRESETS,
    WeightsError,
    create_model,
    load_pretrained,
    load_weights,
    resample_pos_embed,
    save_weights,
)
from minivit.vit import ViT  # noqa: E402

SMALL = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=16, depth=2,
             heads=2, mlp_dim=24, gelu="exact", norm_eps=1e-6)
QUIET = dict(log=lambda *a: None)

# Parameter counts of timm's models (timm's model cards / num_params).
TIMM_PARAMS = {"vit_tiny_patch16_224": 5_717_416, "vit_small_patch16_224": 22_050_664,
               "vit_base_patch16_224": 86_567_656, "vit_base_patch32_224": 88_224_232,
               "vit_large_patch16_224": 304_326_632}


def _count(cfg):
    d, m, p, c, k = cfg["dim"], cfg["mlp_dim"], cfg["patch_size"], cfg["in_channels"], \
        cfg["num_classes"]
    tokens = (cfg["image_size"] // p) ** 2 + 1
    block = 2 * 2 * d + 3 * d * d + 3 * d + d * d + d + d * m + m + m * d + d
    return d * c * p * p + d + d + tokens * d + cfg["depth"] * block + 2 * d + d * k + k


def test_presets_have_timms_sizes():
    for name, cfg in PRESETS.items():
        assert _count(cfg) == TIMM_PARAMS[name], name
    for name in ("vit_tiny_patch16_224", "vit_small_patch16_224"):   # the formula is right
        assert create_model(name).num_parameters() == TIMM_PARAMS[name]
    assert PRESETS["vit_base_patch32_224"]["patch_size"] == 32
    with pytest.raises(WeightsError, match="unknown preset 'vit_huge'.*vit_tiny_patch16_224"):
        create_model("vit_huge")


# --------------------------------------------------------------------------
# Google's .npz, checked against an independent forward
# --------------------------------------------------------------------------
def google_checkpoint(seed=0, pre_logits=None, cfg=SMALL):
    rng = np.random.default_rng(seed)
    d, h, m, p, c = cfg["dim"], cfg["heads"], cfg["mlp_dim"], cfg["patch_size"], \
        cfg["in_channels"]
    n = (cfg["image_size"] // p) ** 2
    r = lambda *s: rng.normal(0, 0.3, size=s)  # noqa: E731
    g = {"embedding/kernel": r(p, p, c, d), "embedding/bias": r(d), "cls": r(1, 1, d),
         "Transformer/posembed_input/pos_embedding": r(1, n + 1, d),
         "Transformer/encoder_norm/scale": 1 + r(d), "Transformer/encoder_norm/bias": r(d),
         "head/kernel": r(pre_logits or d, cfg["num_classes"]),
         "head/bias": r(cfg["num_classes"])}
    if pre_logits:
        g["pre_logits/kernel"], g["pre_logits/bias"] = r(d, pre_logits), r(pre_logits)
    for i in range(cfg["depth"]):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        g.update({b + "LayerNorm_0/scale": 1 + r(d), b + "LayerNorm_0/bias": r(d),
                  b + "LayerNorm_2/scale": 1 + r(d), b + "LayerNorm_2/bias": r(d),
                  a + "out/kernel": r(h, d // h, d), a + "out/bias": r(d),
                  b + "MlpBlock_3/Dense_0/kernel": r(d, m), b + "MlpBlock_3/Dense_0/bias": r(m),
                  b + "MlpBlock_3/Dense_1/kernel": r(m, d), b + "MlpBlock_3/Dense_1/bias": r(d)})
        for name in ("query", "key", "value"):
            g[a + name + "/kernel"], g[a + name + "/bias"] = r(d, h, d // h), r(h, d // h)
    return g


def google_forward(g, x, eps=1e-6):
    """ViT forward straight from Google's arrays (NHWC convolution as patches,
    per-head einsums), float64."""
    def ln(z, prefix):
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + eps) * g[prefix + "/scale"] + g[prefix + "/bias"]

    kernel = g["embedding/kernel"]
    P = kernel.shape[0]
    B, C, H, W = x.shape
    nhwc = x.transpose(0, 2, 3, 1).reshape(B, H // P, P, W // P, P, C)
    z = np.einsum("bypxqc,pqcd->byxd", nhwc, kernel).reshape(B, -1, kernel.shape[-1])
    z = z + g["embedding/bias"]
    z = np.concatenate([np.broadcast_to(g["cls"], (B, 1, z.shape[-1])), z], axis=1)
    z = z + g["Transformer/posembed_input/pos_embedding"]
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in g:
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        y = ln(z, b + "LayerNorm_0")
        q, k, v = (np.einsum("btd,dhk->bthk", y, g[a + n + "/kernel"]) + g[a + n + "/bias"]
                   for n in ("query", "key", "value"))
        s = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshk->bthk", s, v)
        z = z + np.einsum("bthk,hkd->btd", o, g[a + "out/kernel"]) + g[a + "out/bias"]
        y = ln(z, b + "LayerNorm_2")
        y = y @ g[b + "MlpBlock_3/Dense_0/kernel"] + g[b + "MlpBlock_3/Dense_0/bias"]
        y = 0.5 * y * (1 + erf(y / math.sqrt(2)))
        z = z + y @ g[b + "MlpBlock_3/Dense_1/kernel"] + g[b + "MlpBlock_3/Dense_1/bias"]
        i += 1
    f = ln(z, "Transformer/encoder_norm")[:, 0]
    if "pre_logits/kernel" in g:
        f = np.tanh(f @ g["pre_logits/kernel"] + g["pre_logits/bias"])
    return f @ g["head/kernel"] + g["head/bias"]


@pytest.mark.parametrize("pre_logits", [None, 7])
def test_google_npz_gives_the_reference_logits(tmp_path, pre_logits):
    g = google_checkpoint(pre_logits=pre_logits)
    path = tmp_path / "ViT-tiny.npz"
    np.savez(path, **g)
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16))
    with backend.using(dtype="float64"):
        model = load_pretrained(path, **QUIET)
        assert model.config["heads"] == 2 and model.config["pre_logits"] == pre_logits
        np.testing.assert_allclose(backend.to_numpy(model.forward(x)), google_forward(g, x),
                                   rtol=1e-10, atol=1e-10)
    model32 = load_pretrained(path, **QUIET)             # float32 by default
    assert model32.dtype == np.float32
    np.testing.assert_allclose(model32.forward(x), google_forward(g, x), rtol=1e-4, atol=1e-4)
    # and back: minivit writes Google's layout, which gives the same arrays
    out = tmp_path / "again.npz"
    with backend.using(dtype="float64"):
        save_weights(load_pretrained(path, **QUIET), out)
    with np.load(out) as again:
        assert set(again.files) == set(g)
        for k in g:
            np.testing.assert_allclose(again[k], g[k], rtol=0, atol=1e-15, err_msg=k)


def test_safetensors_round_trip_with_timm_names(tmp_path):
    from safetensors.numpy import load_file
    model = ViT(**SMALL, seed=3)
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    raw = load_file(str(path))
    assert list(raw) == sorted(model.state_dict()) or set(raw) == set(model.state_dict())
    assert raw["blocks.1.attn.qkv.weight"].shape == (48, 16)
    again = load_pretrained(path, **QUIET)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(again.eval().forward(x), model.eval().forward(x))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_weights(model, path)
    save_weights(model, path, overwrite=True)


def test_bfloat16_safetensors_become_float32(tmp_path):
    """A bf16 file (NumPy has no bf16): read from the raw bytes, exactly."""
    model = ViT(**SMALL, seed=4)
    state = model.state_dict()
    header, blobs, offset = {}, [], 0
    for name, value in state.items():
        bits = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(bits)]}
        blobs.append(bits)
        offset += len(bits)
    text = json.dumps(header).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    with pytest.warns(UserWarning, match="bfloat16 tensors converted to float32"):
        loaded, info = load_weights(path)
    truncated = (state["head.weight"].view(np.uint32) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(loaded["head.weight"], truncated)
    assert loaded["head.weight"].dtype == np.float32


def test_new_head_and_resampled_position_embedding(tmp_path):
    model = ViT(**SMALL, seed=5)
    path = tmp_path / "m.safetensors"
    save_weights(model, path)
    notes = []
    tuned = load_pretrained(path, num_classes=3, image_size=32, log=notes.append)
    assert "head of 5 classes replaced by a new one of 3" in notes[0]
    assert "resampled from 16 to 64 patch positions" in notes[1]
    assert tuned.forward(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3)
    mine, theirs = tuned.state_dict(), model.state_dict()
    np.testing.assert_array_equal(mine["blocks.0.mlp.fc1.weight"], theirs["blocks.0.mlp.fc1.weight"])
    np.testing.assert_array_equal(mine["pos_embed"][0, 0], theirs["pos_embed"][0, 0])  # cls kept


def test_resample_pos_embed():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1, 17, 6))
    np.testing.assert_array_equal(resample_pos_embed(table, 4), table)       # same grid
    const = np.ones((1, 1 + 9, 2)) * np.array([3.0, -1.0])
    np.testing.assert_allclose(resample_pos_embed(const, 7), np.ones((1, 50, 2)) * [3, -1])
    # a linear ramp over the grid stays linear inside (bilinear reproduces it)
    ramp = np.zeros((1, 1 + 16, 1))
    ramp[0, 1:, 0] = np.repeat(np.arange(4.0), 4)                         # row index
    up = resample_pos_embed(ramp, 8, mode="bilinear")[0, 1:, 0].reshape(8, 8)
    np.testing.assert_allclose(up[2:6, 0], [0.75, 1.25, 1.75, 2.25])
    assert np.all(up == up[:, :1])                                         # constant along rows
    with pytest.raises(WeightsError, match="not a square grid"):
        resample_pos_embed(np.zeros((1, 1 + 12, 2)), 4)
    with pytest.raises(ValueError, match="resample mode must be one of"):
        resample_pos_embed(table, 5, mode="area")
    # bicubic (the default) keeps constants too, and every weight row sums to 1
    np.testing.assert_allclose(resample_pos_embed(const, 2), np.ones((1, 5, 2)) * [3, -1])


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("old,new", [(14, 24), (14, 7), (7, 14), (4, 7), (24, 14), (14, 2)])
def test_resample_pos_embed_equals_timms_interpolation(old, new, mode):
    """timm resamples with torch's interpolate(antialias=True, align_corners=False)."""
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(old * new).standard_normal((1, 1 + old * old, 5))
    ours = resample_pos_embed(table, new, mode=mode)
    grid = torch.from_numpy(table[0, 1:].reshape(old, old, 5)).permute(2, 0, 1)[None]
    theirs = torch.nn.functional.interpolate(grid, size=(new, new), mode=mode, antialias=True,
                                             align_corners=False)
    theirs = theirs[0].permute(1, 2, 0).reshape(new * new, 5).numpy()
    np.testing.assert_allclose(ours[0, 1:], theirs, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(ours[0, 0], table[0, 0])                # class token kept


# --------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------
def test_not_a_checkpoint_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(WeightsError, match="junk.safetensors is not a readable safetensors"):
        load_weights(junk)
    model = ViT(**SMALL, seed=0)
    good = tmp_path / "good.safetensors"
    save_weights(model, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        load_weights(cut)
    npz = tmp_path / "cut.npz"
    np.savez(tmp_path / "full.npz", **google_checkpoint())
    npz.write_bytes((tmp_path / "full.npz").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cut.npz is not a readable .npz"):
        load_weights(npz)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors does not exist"):
        load_weights(tmp_path / "nowhere.safetensors")


def test_a_cnn_checkpoint_is_refused(tmp_path):
    from safetensors.numpy import save_file
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
               "bn1.weight": np.ones(64, np.float32), "fc.weight": np.zeros((1000, 512),
                                                                             np.float32)},
              str(path))
    with pytest.raises(WeightsError, match=r"resnet.safetensors is not a Vision Transformer.*"
                                           r"lacks cls_token.*holds .*conv1.weight"):
        load_weights(path)


def test_a_mismatched_preset_lists_every_tensor_with_both_shapes(tmp_path):
    path = tmp_path / "small.safetensors"
    save_weights(ViT(**SMALL, seed=0), path)
    with pytest.raises(WeightsError) as info:
        load_pretrained(path, preset="vit_tiny_patch16_224", num_classes=5, **QUIET)
    text = str(info.value)
    assert "small.safetensors does not fit the model" in text
    assert "blocks.0.attn.qkv.weight: expected (576, 192), got (48, 16)" in text
    assert "missing keys: blocks.2.norm1.weight" in text
    assert "cls_token: expected (1, 1, 192), got (1, 1, 16)" in text


def test_unsupported_dtype_is_named(tmp_path):
    from safetensors.numpy import save_file
    state = ViT(**SMALL, seed=0).state_dict()
    state["cls_token"] = state["cls_token"].astype(np.int8)       # quantised, say
    path = tmp_path / "int8.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"int8.safetensors: tensors of a dtype minivit "
                                           r"does not support: cls_token \(int8\)"):
        load_weights(path)


def test_pytorch_state_dict(tmp_path):
    torch = pytest.importorskip("torch", reason="optional: .pth files need torch")
    model = ViT(**SMALL, seed=6)
    path = tmp_path / "model.pth"
    torch.save({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, path)
    again = load_pretrained(path, **QUIET)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)


def test_every_public_name_still_imports_from_the_package():
    """minivit.pretrained was one module; its names live on in the package."""
    import minivit.pretrained as pretrained
    for name in ("PRESETS", "WeightsError", "create_model", "load_weights", "load_pretrained",
                 "save_weights", "config_from_state_dict", "resample_pos_embed",
                 "resampling_weights", "RESAMPLE_MODES", "from_google", "to_google",
                 "PRETRAINED_CFG", "EvalTransform", "ImageError", "open_rgb"):
        assert hasattr(pretrained, name), name
        assert name in pretrained.__all__, name
    from minivit.pretrained.loading import load_pretrained as inner
    assert pretrained.load_pretrained is inner
