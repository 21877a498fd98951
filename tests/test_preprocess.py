"""timm's evaluation transform (minivit.pretrained.preprocess) against torchvision.

Where torchvision is installed (CI's timm environment), the tensors are
compared with torchvision's own ``Resize -> CenterCrop -> ToTensor ->
Normalize`` on the same PIL images, the pipeline timm 1.0.31's
``transforms_imagenet_eval`` builds. Everywhere, :data:`GEOMETRY` pins the
resized size and the crop box for the same image sizes, values computed once
with torchvision 0.29.1 (``_compute_resized_output_size`` and
``center_crop`` on an image of pixel coordinates).
"""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image", reason="photos need Pillow")

from minivit.pretrained import PRESETS, PRETRAINED_CFG  # noqa: E402
from minivit.pretrained.preprocess import (  # noqa: E402
    EvalTransform,
    ImageError,
    crop_box,
    load_image,
    open_rgb,
    resized_size,
)

# (width, height, crop_pct) -> ((resized w, h), crop box (left, top, right, bottom)),
# image_size 224; crop_pct 1.15 makes the resized image smaller than the crop (padding).
GEOMETRY = {
    (512, 600, 0.9): ((248, 290), (12, 33, 236, 257)),       # the Grace Hopper photo
    (640, 427, 0.9): ((371, 248), (74, 12, 298, 236)),       # landscape; 73.5 rounds to 74
    (375, 500, 0.9): ((248, 330), (12, 53, 236, 277)),       # portrait
    (300, 300, 0.9): ((248, 248), (12, 12, 236, 236)),       # square
    (100, 150, 0.9): ((248, 372), (12, 74, 236, 298)),       # smaller than the crop
    (20, 30, 0.9): ((248, 372), (12, 74, 236, 298)),
    (333, 517, 0.9): ((248, 385), (12, 80, 236, 304)),       # odd; 80.5 rounds to 80
    (1001, 249, 0.9): ((996, 248), (386, 12, 610, 236)),
    (249, 249, 0.9): ((248, 248), (12, 12, 236, 236)),
    (7, 3, 0.9): ((578, 248), (177, 12, 401, 236)),
    (225, 901, 0.9): ((248, 993), (12, 384, 236, 608)),
    (512, 600, 1.15): ((194, 227), (-15, 2, 209, 226)),
    (640, 427, 1.15): ((290, 194), (33, -15, 257, 209)),
    (375, 500, 1.15): ((194, 258), (-15, 17, 209, 241)),
    (300, 300, 1.15): ((194, 194), (-15, -15, 209, 209)),
    (100, 150, 1.15): ((194, 291), (-15, 34, 209, 258)),
    (333, 517, 1.15): ((194, 301), (-15, 38, 209, 262)),
    (1001, 249, 1.15): ((779, 194), (278, -15, 502, 209)),
    (7, 3, 1.15): ((452, 194), (114, -15, 338, 209)),
    (225, 901, 1.15): ((194, 776), (-15, 276, 209, 500)),
}


def photo():
    """A real photo that ships with matplotlib (512 x 600, RGB JPEG)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


def test_geometry_is_torchvisions():
    for (w, h, crop_pct), (resized, box) in GEOMETRY.items():
        t = EvalTransform(224, crop_pct)
        assert t.scale_size == {0.9: 248, 1.15: 194}[crop_pct]
        assert resized_size(w, h, t.scale_size) == resized, (w, h, crop_pct)
        assert crop_box(*resized, 224) == box, (w, h, crop_pct)
        assert t.geometry(w, h) == {"resized": resized, "crop": box}
    # floor, not round: 224 / 0.9 = 248.9 (the old example used 249)
    assert EvalTransform(224, 0.9).scale_size == 248
    assert EvalTransform(384, 1.0).scale_size == 384


def test_presets_carry_timms_pretrained_cfg():
    assert set(PRETRAINED_CFG) == set(PRESETS)
    for name, cfg in PRETRAINED_CFG.items():
        assert (cfg["crop_pct"], cfg["interpolation"], cfg["mean"], cfg["std"]) == \
            (0.9, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), name
        t = EvalTransform.for_preset(name)
        assert (t.image_size, t.crop_pct, t.interpolation) == (224, 0.9, "bicubic")
    assert PRETRAINED_CFG["vit_base_patch16_224"]["tag"] == "augreg2_in21k_ft_in1k"
    with pytest.raises(ValueError, match="unknown preset 'vit_huge'"):
        EvalTransform.for_preset("vit_huge")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        EvalTransform(interpolation="cubic")


def test_zero_padding_and_crop_by_hand():
    """The crop on a tiny image of known pixels, padding included (crop_pct > 1)."""
    img = Image.fromarray(np.arange(1, 13, dtype=np.uint8).reshape(3, 4), mode="L")
    t = EvalTransform(image_size=4, crop_pct=1.0, interpolation="nearest")
    assert t.geometry(4, 3)["resized"] == (5, 4)
    out = t.resize_and_crop(img.resize((5, 4), 0))[..., 0]
    assert out.shape == (4, 4)
    pad = EvalTransform(image_size=6, crop_pct=1.5, interpolation="nearest")   # scale 4
    assert pad.geometry(4, 4) == {"resized": (4, 4), "crop": (-1, -1, 5, 5)}
    square = Image.fromarray(np.full((4, 4), 9, np.uint8), mode="L")
    got = pad.resize_and_crop(square)[..., 0]
    want = np.zeros((6, 6), np.uint8)
    want[1:5, 1:5] = 9
    np.testing.assert_array_equal(got, want)
    x = pad.to_tensor(pad.resize_and_crop(square.convert("RGB")))
    assert x.dtype == np.float32 and x.shape == (3, 6, 6)
    assert x[0, 1, 1] == np.float32(9) / np.float32(255)


def _variants(tmp_path):
    """Files of the real photo at several sizes and in several modes."""
    base = photo()
    out = {}
    for w, h, _ in [k for k in GEOMETRY if k[2] == 0.9]:
        img = base if (w, h) == base.size else base.resize((w, h), Image.Resampling.BICUBIC)
        out[f"rgb_{w}x{h}"] = img
    out["gray_333x517"] = base.resize((333, 517)).convert("L")
    rgba = np.asarray(base.resize((375, 500)).convert("RGBA")).copy()
    rgba[..., 3] = 255
    rgba[:100, :, 3] = 0                             # a transparent band, colours kept
    rgba[100:200, :, 3] = 128
    out["rgba_375x500"] = Image.fromarray(rgba, mode="RGBA")
    paths = {}
    for name, img in out.items():
        paths[name] = tmp_path / f"{name}.png"
        img.save(paths[name])
    return paths


def test_tensors_equal_torchvisions(tmp_path):
    """Pixel for pixel: exactly equal for every size and mode (allowed: 1/255)."""
    pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms", reason="needs torchvision")
    for crop_pct in (0.9, 1.15):
        mine = EvalTransform(224, crop_pct)
        theirs = transforms.Compose([
            transforms.Resize(mine.scale_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize(mean=mine.mean, std=mine.std)])
        worst = {}
        for name, path in _variants(tmp_path).items():
            with Image.open(path) as img:
                want = theirs(img.convert("RGB")).numpy()      # what a timm user runs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # the RGBA file's dropped transparency
                got, _ = load_image(path, mine)
            assert got.shape == want.shape == (3, 224, 224) and got.dtype == np.float32
            worst[name] = float(np.abs(got - want).max()) * 0.5      # back to [0, 1] units
            assert worst[name] <= 1 / 255, (name, crop_pct, worst[name])
        # the typical case (a photo of any size, RGB): bit for bit
        typical = [n for n in worst if n.startswith("rgb_")]
        assert all(worst[n] == 0.0 for n in typical), worst


# --------------------------------------------------------------------------
# Bad and unusual input
# --------------------------------------------------------------------------
def _png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (colour type 0 grey or 2 RGB), big-endian samples."""
    h, w = arr.shape[:2]
    kind = 2 if arr.ndim == 3 else 0
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16,
                                                                       kind, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_not_an_image_truncated_and_missing(tmp_path):
    junk = tmp_path / "notes.jpg"
    junk.write_text("not a picture")
    with pytest.raises(ImageError, match=r"cannot read .*notes.jpg as an image"):
        open_rgb(junk)
    full = tmp_path / "full.jpg"
    photo().save(full, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:4000])
    with pytest.raises(ImageError, match=r"cannot read .*cut.jpg as an image: .*truncated"):
        open_rgb(cut)
    with pytest.raises(ImageError, match=r"image file .*nowhere.png not found"):
        open_rgb(tmp_path / "nowhere.png")


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey = (np.arange(6 * 8).reshape(6, 8) * 1365).astype(np.uint16)     # 0 ... 64155
    path = tmp_path / "grey16.png"
    _png16(path, grey)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
        clipped = np.asarray(img.convert("RGB"))[..., 0]
    assert (clipped[grey > 255] == 255).all()            # what convert("RGB") would give
    got = np.asarray(open_rgb(path))
    want = np.rint(grey / 257.0).astype(np.uint8)        # 65535 -> 255, 257 -> 1
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], want)
    rgb = np.stack([grey, grey[::-1], 65535 - grey], axis=-1)
    path = tmp_path / "rgb16.png"
    _png16(path, rgb)
    got = np.asarray(open_rgb(path)).astype(int)         # Pillow keeps the high byte
    assert np.abs(got - np.rint(rgb / 257.0)).max() <= 1


def test_alpha_is_dropped_like_convert_rgb_with_a_warning(tmp_path):
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:10, :, 3] = 0                                    # a transparent band
    path = tmp_path / "logo.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    with pytest.warns(UserWarning, match="logo.png: transparency dropped"):
        got = np.asarray(open_rgb(path))
    with Image.open(path) as img:
        np.testing.assert_array_equal(got, np.asarray(img.convert("RGB")))
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # opaque: nothing to say
        assert open_rgb(path).mode == "RGB"


def test_cmyk_jpeg_and_grayscale_convert_as_pil_does(tmp_path):
    cmyk = photo().resize((64, 48)).convert("CMYK")
    path = tmp_path / "print.jpg"
    cmyk.save(path)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        want = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(open_rgb(path)), want)
    path = tmp_path / "grey.png"
    photo().convert("L").save(path)
    got = np.asarray(open_rgb(path))
    assert got.shape == (600, 512, 3) and (got[..., 0] == got[..., 2]).all()


def test_an_image_smaller_than_a_patch_is_refused(tmp_path):
    path = tmp_path / "icon.png"
    Image.new("RGB", (12, 40), (10, 20, 30)).save(path)
    with pytest.raises(ImageError, match=r"icon.png is 12x40 pixels: smaller than one "
                                         r"16-pixel patch"):
        open_rgb(path, min_side=16)
    assert open_rgb(path, min_side=12).size == (12, 40)
