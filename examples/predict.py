"""Classify your own images with a trained ViT checkpoint or pretrained weights.

    python examples/predict.py --checkpoint runs/mnist/best.npz digit1.png digit2.png --top 3
    python examples/predict.py --weights vit_base.safetensors --model vit_base_patch16_224 \\
        --labels imagenet_classes.txt photo.jpg

For each file it prints the ``--top`` most likely classes with their
probabilities. Any image Pillow reads works (PNG, JPEG, ...; grayscale,
RGB, palette, with or without transparency, 8 or 16 bit). Each image is

1. flattened: transparency composited onto white (drawing apps leave the
   background transparent and the ink dark), 16-bit scaled to 8-bit;
2. converted to grayscale (or RGB, for a 3-channel model);
3. brought to the model's input size. For a digit model (MNIST,
   Fashion-MNIST) it is padded to a square with its own border colour (no
   stretching) and resized with an antialiasing (Lanczos) filter; for a
   model trained on photos (CIFAR-10, an image folder) it is resized as the
   training images were (bilinear, to S x S);
4. inverted if needed: MNIST digits are white on black, so with
   ``--invert auto`` an image whose border is bright (dark ink on white
   paper) is inverted when the model is a digit model; ``yes`` / ``no``
   force it;
5. normalised with the (per-channel) mean and std stored in the checkpoint.

Class names come from the checkpoint (an image folder's subfolder names, or
the dataset's own names, e.g. Fashion-MNIST's "Ankle boot").

Photo models from pretrained weights are different: their images are
prepared exactly as timm prepares them for evaluation
(:class:`minivit.pretrained.preprocess.EvalTransform`: shorter side resized to
floor(S / crop_pct) bicubic, centre crop, the preset's mean and std; alpha
dropped as timm's users' ``convert("RGB")`` drops it). That is the case for
``--weights FILE`` (timm's ``.safetensors``, Google's ``.npz``, ...; class
names from ``--labels``), and for a checkpoint fine-tuned from such weights
on an image folder (``examples/finetune.py`` prepares the folder the same
way), recognised by its model: 3 channels and the exact GELU of timm's
architectures (``preprocess.is_timm_photo_model``).

Tip: MNIST digits fill about 20 x 20 pixels of the 28 x 28 frame, centred.
A digit cropped tight to its edges, or a tiny one in a big empty image,
is out of distribution; leave a margin of about a fifth of its size.

Needs Pillow (``pip install pillow``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from minivit import data, viz
from minivit.pretrained import PRESETS, WeightsError, load_pretrained
from minivit.pretrained import preprocess

INVERT_CHOICES = ("auto", "yes", "no")


class ImageError(ValueError):
    """An input image that is missing or cannot be read."""


def _pil():
    """Import Pillow, or stop with the one command that fixes it."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise SystemExit(
            "predict.py: error: reading images needs Pillow, which is not installed; "
            "install it with `pip install pillow`"
        ) from None
    return Image, ImageOps


def _flatten(img):
    """Any Pillow mode -> "L" or "RGB"-convertible 8-bit image without alpha."""
    Image, _ = _pil()
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit integer or float grey: Pillow's convert("L") would clip,
        # so scale the range ourselves.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max(initial=0.0)
        scale = 1.0 if (img.mode == "F" and top <= 1.0) else (255.0 if top <= 255 else 65535.0)
        arr = np.clip(arr / scale, 0.0, 1.0)
        return Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img


def _border(arr: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels of an (H, W[, C]) array, as (K[, C])."""
    return np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])


def load_image(path, image_size: int, in_channels: int = 1, mean=0.0,
               std=1.0, invert: str = "auto", fit: str = "pad") -> tuple[np.ndarray, bool]:
    """Read one image file and turn it into a normalised model input.

    Args:
        path: image file.
        image_size: the model's input side S.
        in_channels: 1 (grayscale) or 3 (RGB).
        mean, std: normalisation on the [0, 1] scale (the checkpoint's): a
            number, or one per channel.
        invert: "auto" (invert when the border is bright and ``fit`` is
            "pad"), "yes" or "no".
        fit: "pad" (to a square with the border colour, then Lanczos resize:
            digits) or "resize" (bilinear to S x S, as image folders are read
            for training).

    Returns:
        ``(x, inverted)``: float32 (C, S, S) normalised image, and whether it
        was inverted.

    Raises:
        ImageError: the file is missing or is not an image Pillow can read.
    """
    Image, ImageOps = _pil()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"image file {path!r} not found")
    try:
        with Image.open(path) as img:
            img.load()                      # decode now, inside the error handling
            img = _flatten(img).convert("L" if in_channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError (not an image) and truncated files are OSErrors
        raise ImageError(f"cannot read image {path!r}: {exc}") from None

    arr = np.asarray(img)                                   # uint8 (h, w[, 3])
    border = _border(arr)
    if fit == "pad":
        # Pad with the border's own colour so the padding blends into the background.
        fill = tuple(int(v) for v in np.median(border.reshape(len(border), -1), axis=0))
        img = ImageOps.pad(img, (image_size, image_size), method=Image.Resampling.LANCZOS,
                           color=fill[0] if in_channels == 1 else fill)
    elif img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0           # (S, S[, 3]) in [0, 1]

    inverted = invert == "yes" or (invert == "auto" and fit == "pad"
                                   and float(border.mean()) / 255.0 > 0.5)
    if inverted:
        x = 1.0 - x
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)    # (C, S, S)
    # one mean/std per channel (C, 1, 1), or one for all
    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std).astype(np.float32), inverted


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--checkpoint", default="runs/mnist/best.npz",
                   help="trainer checkpoint (.npz); default %(default)s")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="pretrained weights instead of a checkpoint (.safetensors, Google "
                        ".npz, .pth): images prepared as timm's eval transform")
    p.add_argument("--model", choices=tuple(PRESETS), default=None,
                   help="with --weights: the architecture and its timm settings, if the "
                        "file does not say")
    p.add_argument("--labels", default=None,
                   help="with --weights: text file with one class name per line")
    p.add_argument("--top", type=int, default=3, help="classes to show per image; "
                   "default %(default)s")
    p.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                   help="make dark-on-light images light-on-dark like MNIST: auto "
                   "(when the border is bright), yes, no; default %(default)s")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be at least 1, got {args.top}")
    return args


def read_labels(path, num_classes: int) -> list[str]:
    """One class name per line (``--labels``), or "0", "1", ... without a file."""
    if path is None:
        return [str(k) for k in range(num_classes)]
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise SystemExit(f"predict.py: error: {path} has {len(names)} class names, the "
                         f"model's head has {num_classes} classes")
    return names


def fine_tuned_photo_transform(config: dict):
    """timm's eval transform for a checkpoint fine-tuned from pretrained weights
    on an image folder (3 channels, exact GELU: the presets' architecture),
    with the checkpoint's mean and std; None for every other checkpoint."""
    mcfg = config["model"]
    if config.get("dataset") != "imagefolder" or not preprocess.is_timm_photo_model(mcfg):
        return None
    return preprocess.EvalTransform(mcfg["image_size"], mean=tuple(config["mean"]),
                                    std=tuple(config["std"]))


def _from_weights(args):
    """(model, class names, transform) for ``--weights``."""
    try:
        model = load_pretrained(args.weights, preset=args.model, log=lambda *a: None)
    except (WeightsError, FileNotFoundError, ImportError) as exc:
        raise SystemExit(f"predict.py: error: {exc}") from None
    mcfg = model.config
    if mcfg["in_channels"] != 3:
        raise SystemExit(f"predict.py: error: {args.weights} takes {mcfg['in_channels']}-"
                         "channel images; --weights is for RGB photo models")
    size = mcfg["image_size"]
    transform = (preprocess.EvalTransform.for_preset(args.model, size) if args.model
                 else preprocess.EvalTransform(size))
    return model, read_labels(args.labels, mcfg["num_classes"]), transform


def main(argv=None) -> list[dict]:
    """Run the script; returns one ``{"path", "inverted", "top": [(name, prob)]}`` per image."""
    args = parse_args(argv)
    _pil()                                  # fail early, before loading the model
    info = mean = std = fit = None
    if args.weights:
        model, names, transform = _from_weights(args)
        mcfg = model.config
    else:
        try:
            model, config = viz.load_model(args.checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"predict.py: error: {exc}") from None
        mcfg = config["model"]
        dataset = str(config.get("dataset", "mnist"))
        try:
            info = data.get_dataset_info(dataset)
        except ValueError:                      # an image folder: no registry entry
            info = None
        mean = config.get("mean", info.mean if info else 0.0)
        std = config.get("std", info.std if info else 1.0)
        names = [str(n) for n in config.get("class_names") or (info.class_names if info else [])]
        if len(names) != mcfg.get("num_classes", len(names)):
            names = [str(k) for k in range(mcfg["num_classes"])]
        # light objects on dark (MNIST-style): pad, don't stretch; invert dark-on-light
        fit = "pad" if (info is not None and info.light_on_dark) else "resize"
        transform = fine_tuned_photo_transform(config)

    # Read every file first, so all bad paths are reported in one go.
    inputs, flags, problems = [], [], []
    for path in args.images:
        try:
            if transform is not None:           # a pretrained photo model: timm's way
                x, inverted = preprocess.load_image(path, transform,
                                                    min_side=mcfg["patch_size"])[0], False
            else:
                x, inverted = load_image(path, mcfg.get("image_size", 28),
                                         mcfg.get("in_channels", 1), mean, std, args.invert,
                                         fit)
        except (ImageError, preprocess.ImageError) as exc:
            problems.append(str(exc))
            continue
        inputs.append(x)
        flags.append(inverted)
    if len(problems) == 1:
        raise SystemExit(f"predict.py: error: {problems[0]}")
    if problems:
        raise SystemExit(f"predict.py: error: {len(problems)} image files cannot be used:\n  "
                         + "\n  ".join(problems))

    probs = viz.predict_probs(model, np.stack(inputs))       # (n, K)
    k = min(args.top, probs.shape[1])
    results = []
    for path, inverted, p in zip(args.images, flags, probs):
        order = np.argsort(-p, kind="stable")[:k]
        top = [(names[c], float(p[c])) for c in order]
        print(f"{path}" + ("  (inverted: dark on light)" if inverted else ""))
        width = max(len(name) for name, _ in top)
        for rank, (name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<{width}}  {prob:.4f}")
        results.append({"path": path, "inverted": inverted, "top": top})
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
