"""Where does a pretrained ViT look? Attention maps of a real checkpoint on your photo.

    python examples/attention_pretrained.py dog.jpg --weights ViT-B_16.npz
    python examples/attention_pretrained.py dog.jpg --weights model.safetensors \\
        --model vit_base_patch16_224 --labels imagenet_classes.txt

Loads the weights with minivit's own layers (Google's .npz, timm's
.safetensors, a .pth state dict, or a minivit checkpoint), runs the photo
through them, and writes ``attention_<photo>.png`` (into ``--out``, default
the current folder): the photo, the last layer's CLS attention of every head,
and the attention rollout through all layers (Abnar & Zuidema, 2020), the
maps of the ViT paper's Figure 6. It also prints the top-5 classes (with
names from ``--labels``, one class name per line, if given).

The photo is prepared as timm prepares ImageNet evaluation images: the
shorter side resized to image_size / crop_pct (bicubic), the centre cropped,
then normalised with ``--mean``/``--std`` (0.5 for Google's and timm's
augreg ViTs; use 0.485,0.456,0.406 / 0.229,0.224,0.225 for weights trained
with ImageNet statistics).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import minivit
from minivit import viz
from minivit.pretrained import PRESETS, WeightsError, load_pretrained


def floats3(text):
    values = tuple(float(v) for v in text.split(","))
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}")
    return values * 3 if len(values) == 1 else values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="a photo (JPEG, PNG, ...)")
    p.add_argument("--weights", required=True, help="the checkpoint file")
    p.add_argument("--model", choices=tuple(PRESETS), default=None,
                   help="the architecture, if the file does not say (Google .npz files and "
                        "timm files are recognised from their tensors)")
    p.add_argument("--labels", default=None,
                   help="text file with one class name per line (e.g. ImageNet's 1000)")
    p.add_argument("--mean", type=floats3, default=(0.5, 0.5, 0.5))
    p.add_argument("--std", type=floats3, default=(0.5, 0.5, 0.5))
    p.add_argument("--crop-pct", type=float, default=0.9,
                   help="centre crop fraction, as timm's eval transform; default %(default)s")
    p.add_argument("--out", default=".", help="output folder; default the current one")
    return p.parse_args(argv)


def load_photo(path: str, size: int, crop_pct: float) -> np.ndarray:
    """RGB float (3, size, size) in [0, 1]: resize the shorter side, crop the centre."""
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:
        raise SystemExit("attention_pretrained.py needs Pillow: pip install -e '.[plot]'") \
            from None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            short = int(round(size / crop_pct))
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.BICUBIC)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    except (OSError, ValueError) as exc:
        raise SystemExit(f"attention_pretrained.py: error: cannot read {path} as an "
                         f"image: {exc}") from None


def read_labels(path, num_classes):
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise SystemExit(f"attention_pretrained.py: error: {path} has {len(names)} class "
                         f"names, the model's head has {num_classes} classes")
    return names


def main(argv=None) -> dict:
    """Run the script; returns the figure's path and the top-5 (index, probability)."""
    args = parse_args(argv)
    try:
        model = load_pretrained(args.weights, preset=args.model)
    except (WeightsError, FileNotFoundError) as exc:
        raise SystemExit(f"attention_pretrained.py: error: {exc}") from None
    cfg = model.config
    if cfg["in_channels"] != 3:
        raise SystemExit(f"attention_pretrained.py: error: {args.weights} takes "
                         f"{cfg['in_channels']}-channel images, not RGB photos")
    names = read_labels(args.labels, cfg["num_classes"])
    photo = load_photo(args.image, cfg["image_size"], args.crop_pct)   # (3, S, S)
    x = (photo - np.array(args.mean, np.float32)[:, None, None]) \
        / np.array(args.std, np.float32)[:, None, None]
    with minivit.no_grad():                          # attention maps are still kept
        probs = viz.predict_probs(model, x[None], batch_size=1)[0]
    top = np.argsort(probs)[::-1][:5]
    for rank, k in enumerate(top, 1):
        label = names[k] if names else f"class {k}"
        print(f"{rank}. {label}: {100 * probs[k]:.1f}%")

    stem = os.path.splitext(os.path.basename(args.image))[0]
    path = viz.plot_attention(
        photo[None], viz.cls_attention(model), viz.attention_rollout(model),
        os.path.join(args.out, f"attention_{stem}.png"), preds=top[:1],
        class_names=names)
    print(path)
    return dict(path=path, top5=[(int(k), float(probs[k])) for k in top])


if __name__ == "__main__":
    main(sys.argv[1:])
