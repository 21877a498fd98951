"""Photos for pretrained ViTs: timm's evaluation transform, pixel for pixel.

A timm user classifies a photo with::

    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(Image.open(path).convert("RGB"))

which for the ViT presets (``crop_mode="center"``) is torchvision's
``Resize(scale_size) -> CenterCrop(image_size) -> ToTensor() -> Normalize(mean, std)``
on a PIL image, with ``scale_size = floor(image_size / crop_pct)``
(``timm.data.transforms_imagenet_eval``). :class:`EvalTransform` computes the
same numbers without torch: the geometry (sizes, crop box) is written out
here, the resampling itself is PIL's, as in torchvision's PIL path.

1. **Resize** the shorter side to ``scale_size``, the longer side to
   ``int(scale_size * long / short)`` (Python floats, truncated: torchvision's
   ``_compute_resized_output_size``). An image already of that size is kept
   as it is; any other goes through ``PIL.Image.resize((w, h), filter)``
   (bicubic for the presets; PIL antialiases when shrinking).
2. **Centre crop** ``image_size`` x ``image_size``: offsets
   ``int(round((n - crop) / 2.0))`` with Python's ``round`` (halves go to the
   even number); a side shorter than the crop is first padded with zeros,
   ``(crop - n) // 2`` before and the rest after.
3. **ToTensor**: uint8 -> float32 ``/ 255``, (H, W, C) -> (C, H, W).
4. **Normalize**: float32 ``(x - mean) / std`` per channel.

:func:`open_rgb` reads a file the way such a user's ``.convert("RGB")`` does,
and says which file and what is wrong when it cannot:

* alpha (RGBA, LA, a palette with a transparent colour) is dropped, as
  ``convert("RGB")`` drops it, so the result equals timm's; a
  partly transparent image gets a warning (composite it onto the background
  you mean before, if the hidden colours are not it);
* 16-bit greyscale (PNG mode ``I;16``) is scaled to 8 bit, ``round(v / 257)``
  (65535 -> 255); ``convert`` would clip every value above 255 to white;
* CMYK (JPEG) goes through PIL's own conversion, as ``convert("RGB")``;
* a file that is not an image, a truncated one, or one whose shorter side is
  below ``min_side`` (e.g. the patch size) raises :class:`ImageError`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from minivit.pretrained.presets import PRESETS, PRETRAINED_CFG

__all__ = ["EvalTransform", "ImageError", "open_rgb", "load_image", "resized_size",
           "crop_box", "is_timm_photo_model", "INTERPOLATIONS"]

# timm's interpolation names -> PIL's filter numbers (torchvision's pil_modes_mapping)
INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4,
                  "hamming": 5}


def is_timm_photo_model(model_config: dict) -> bool:
    """Whether a ViT config is a timm architecture on RGB photos, whose images
    this module prepares: 3 channels and the exact GELU (minivit's own
    from-scratch models use the tanh GELU)."""
    return model_config.get("in_channels") == 3 and model_config.get("gelu") == "exact"


class ImageError(ValueError):
    """An image file that cannot be used (the message names the file)."""


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) with the shorter side ``size``, as torchvision's
    ``Resize(size)`` computes it: the longer side is
    ``int(size * long / short)``, truncated, in Python float arithmetic."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``CenterCrop(crop)`` on a
    ``width`` x ``height`` image; negative or past-the-edge where it pads with 0."""
    def start(n):
        if crop > n:                       # padded by (crop - n) // 2 before
            return -((crop - n) // 2)
        return int(round((n - crop) / 2.0))
    left, top = start(width), start(height)
    return left, top, left + crop, top + crop


@dataclass(frozen=True)
class EvalTransform:
    """timm's ``transforms_imagenet_eval`` (centre crop mode) for one model.

    ``EvalTransform.for_preset("vit_base_patch16_224")`` takes the preset's
    timm ``pretrained_cfg``; calling it on a PIL image gives the float32
    (3, image_size, image_size) input timm would feed the model.
    """

    image_size: int = 224
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}")
        if not 0 < self.crop_pct:
            raise ValueError(f"crop_pct must be positive, got {self.crop_pct}")

    @classmethod
    def for_preset(cls, name: str, image_size: int | None = None) -> EvalTransform:
        """The transform of a :data:`~minivit.pretrained.PRESETS` name (its
        :data:`~minivit.pretrained.PRETRAINED_CFG`), optionally at another size."""
        if name not in PRETRAINED_CFG:
            raise ValueError(f"unknown preset {name!r}; the presets are: "
                             f"{', '.join(PRETRAINED_CFG)}")
        cfg = PRETRAINED_CFG[name]
        return cls(image_size or PRESETS[name]["image_size"], cfg["crop_pct"],
                   cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))

    @property
    def scale_size(self) -> int:
        """The shorter side after resizing: ``floor(image_size / crop_pct)``."""
        return math.floor(self.image_size / self.crop_pct)

    def geometry(self, width: int, height: int) -> dict:
        """Where an image of this size goes: ``resized`` (w, h) and the
        ``crop`` box (left, top, right, bottom) in the resized image."""
        w, h = resized_size(width, height, self.scale_size)
        return {"resized": (w, h), "crop": crop_box(w, h, self.image_size)}

    def resize_and_crop(self, img) -> np.ndarray:
        """PIL image -> uint8 (image_size, image_size, channels): steps 1 and 2."""
        size = resized_size(img.width, img.height, self.scale_size)
        if size != img.size:
            img = img.resize(size, INTERPOLATIONS[self.interpolation])
        arr = np.asarray(img)
        arr = arr[:, :, None] if arr.ndim == 2 else arr                  # (H, W, C)
        left, top, right, bottom = crop_box(img.width, img.height, self.image_size)
        out = np.zeros((self.image_size, self.image_size, arr.shape[2]), arr.dtype)
        # the part of the box inside the image; the rest stays the zero padding
        y0, y1 = max(top, 0), min(bottom, img.height)
        x0, x1 = max(left, 0), min(right, img.width)
        out[y0 - top:y1 - top, x0 - left:x1 - left] = arr[y0:y1, x0:x1]
        return out

    def to_tensor(self, arr: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) -> float32 (C, H, W) in [0, 1]: step 3."""
        return (arr.astype(np.float32) / np.float32(255)).transpose(2, 0, 1)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """float32 (C, H, W) -> (x - mean) / std per channel: step 4."""
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        return (x - mean) / std

    def __call__(self, img) -> np.ndarray:
        """PIL image (RGB) -> float32 (3, image_size, image_size), normalised."""
        return self.normalize(self.to_tensor(self.resize_and_crop(img)))


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading photos needs Pillow: pip install pillow (or the "
                          "[plot] extra)") from None
    return Image


def open_rgb(path, min_side: int | None = None):
    """Read an image file as an 8-bit RGB PIL image, as timm's users'
    ``Image.open(path).convert("RGB")`` does (see the module's notes on alpha,
    16-bit and CMYK). Raises :class:`ImageError` naming the file and the problem."""
    Image = _pil()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"image file {path} not found")
    try:
        with Image.open(path) as img:
            img.load()                  # decode now: a truncated file fails here
            rgb = _to_rgb(img, path)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # not an image (UnidentifiedImageError), truncated or damaged data
        raise ImageError(f"cannot read {path} as an image: {exc}") from None
    if min_side is not None and min(rgb.size) < min_side:
        raise ImageError(f"{path} is {rgb.width}x{rgb.height} pixels: smaller than one "
                         f"{min_side}-pixel patch; enlarging it would invent the detail "
                         "the model looks at. Use a larger image")
    return rgb


def _to_rgb(img, path: str):
    Image = _pil()
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"{path}: 32-bit integer pixels outside 0-65535; save it "
                             "as an 8- or 16-bit image")
        if img.mode != "I" or arr.max() > 255:      # 16-bit: 65535 -> 255
            arr = np.rint(arr / 257.0)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        raise ImageError(f"{path}: floating-point pixels (mode F); save it as an 8- or "
                         "16-bit image")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            warnings.warn(f"{path}: transparency dropped, as timm's convert('RGB') does "
                          "(hidden pixels keep their stored colour); composite the image "
                          "onto a background first if that is not what you mean",
                          stacklevel=3)
    return img.convert("RGB")


def load_image(path, transform: EvalTransform, min_side: int | None = None):
    """(model input float32 (3, S, S), the cropped photo uint8 (S, S, 3)) of a file."""
    cropped = transform.resize_and_crop(open_rgb(path, min_side))
    return transform.normalize(transform.to_tensor(cropped)), cropped
