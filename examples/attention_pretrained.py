"""Where does a pretrained ViT look? Attention maps of a real checkpoint on your photo.

    python examples/attention_pretrained.py dog.jpg --weights ViT-B_16.npz
    python examples/attention_pretrained.py dog.jpg --weights model.safetensors \\
        --model vit_base_patch16_224 --labels imagenet_classes.txt
    python examples/attention_pretrained.py --weights model.safetensors   # a sample photo

Loads the weights with minivit's own layers (Google's .npz, timm's
.safetensors, a .pth state dict, or a minivit checkpoint), runs the photo
through them, and writes ``attention_<photo>.png`` (into ``--out``, default
the current folder): the photo, the last layer's CLS attention of every head,
and the attention rollout through all layers (Abnar & Zuidema, 2020), the
maps of the ViT paper's Figure 6. It also prints the top-5 classes (with
names from ``--labels``, one class name per line, if given). Without a photo
it uses the portrait of Grace Hopper that ships with matplotlib.

The photo is prepared exactly as timm prepares it for evaluation
(:class:`minivit.pretrained.preprocess.EvalTransform`: the shorter side
resized to floor(image_size / crop_pct), bicubic, the centre cropped, then
normalised), with the preset's timm settings (``--model``; crop 0.9, mean and
std 0.5 for every preset, and for Google's ViTs), or ``--crop-pct``,
``--mean``, ``--std``; e.g. 0.485,0.456,0.406 / 0.229,0.224,0.225 for weights
trained with ImageNet statistics. Transparency is dropped as timm's users'
``convert("RGB")`` drops it (with a warning).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

import minivit
from minivit import viz
from minivit.pretrained import PRESETS, WeightsError, load_pretrained
from minivit.pretrained.preprocess import EvalTransform, ImageError, open_rgb


def floats3(text):
    values = tuple(float(v) for v in text.split(","))
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}")
    return values * 3 if len(values) == 1 else values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", nargs="?", default=None,
                   help="a photo (JPEG, PNG, ...); default matplotlib's sample photo")
    p.add_argument("--weights", required=True, help="the checkpoint file")
    p.add_argument("--model", choices=tuple(PRESETS), default=None,
                   help="the architecture, if the file does not say (Google .npz files and "
                        "timm files are recognised from their tensors)")
    p.add_argument("--labels", default=None,
                   help="text file with one class name per line (e.g. ImageNet's 1000)")
    p.add_argument("--mean", type=floats3, default=None,
                   help="normalisation mean (default: the preset's timm value, 0.5)")
    p.add_argument("--std", type=floats3, default=None,
                   help="normalisation std (default: the preset's timm value, 0.5)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="centre crop fraction of timm's eval transform (default: the "
                        "preset's, 0.9)")
    p.add_argument("--out", default=".", help="output folder; default the current one")
    return p.parse_args(argv)


def read_labels(path, num_classes):
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise SystemExit(f"attention_pretrained.py: error: {path} has {len(names)} class "
                         f"names, the model's head has {num_classes} classes")
    return names


def sample_photo() -> str:
    """The photo that ships with matplotlib (Grace Hopper, 512 x 600)."""
    try:
        from matplotlib import cbook  # noqa: PLC0415
    except ImportError:
        raise SystemExit("attention_pretrained.py: error: give a photo, or install "
                         "matplotlib (the [plot] extra) for its sample photo") from None
    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def eval_transform(args, model) -> EvalTransform:
    """timm's evaluation transform for the model: the preset's settings (every
    preset, and Google's ViTs, use crop 0.9, bicubic, mean = std = 0.5), with
    the options given on the command line in their place."""
    size = model.config["image_size"]
    base = EvalTransform.for_preset(args.model, size) if args.model else EvalTransform(size)
    return replace(base, **{k: v for k, v in dict(crop_pct=args.crop_pct, mean=args.mean,
                                                    std=args.std).items() if v is not None})


def main(argv=None) -> dict:
    """Run the script; returns the figure's path and the top-5 (index, probability)."""
    args = parse_args(argv)
    if args.image is None:
        args.image = sample_photo()
        print(f"no photo given: using matplotlib's sample photo {args.image}")
    try:
        photo = open_rgb(args.image)                 # fail before loading big weights
        model = load_pretrained(args.weights, preset=args.model)
    except (WeightsError, ImageError, FileNotFoundError, ImportError) as exc:
        raise SystemExit(f"attention_pretrained.py: error: {exc}") from None
    cfg = model.config
    if cfg["in_channels"] != 3:
        raise SystemExit(f"attention_pretrained.py: error: {args.weights} takes "
                         f"{cfg['in_channels']}-channel images, not RGB photos")
    if min(photo.size) < cfg["patch_size"]:
        raise SystemExit(f"attention_pretrained.py: error: {args.image} is "
                         f"{photo.width}x{photo.height} pixels: smaller than one "
                         f"{cfg['patch_size']}-pixel patch; use a larger image")
    names = read_labels(args.labels, cfg["num_classes"])
    transform = eval_transform(args, model)
    crop = transform.to_tensor(transform.resize_and_crop(photo))     # (3, S, S) in [0, 1]
    x = transform.normalize(crop)
    with minivit.no_grad():                          # attention maps are still kept
        probs = viz.predict_probs(model, x[None], batch_size=1)[0]
    top = np.argsort(probs)[::-1][:5]
    for rank, k in enumerate(top, 1):
        label = names[k] if names else f"class {k}"
        print(f"{rank}. {label}: {100 * probs[k]:.1f}%")

    stem = os.path.splitext(os.path.basename(args.image))[0]
    path = viz.plot_attention(
        crop[None], viz.cls_attention(model), viz.attention_rollout(model),
        os.path.join(args.out, f"attention_{stem}.png"), preds=top[:1],
        class_names=names)
    print(path)
    return dict(path=path, top5=[(int(k), float(probs[k])) for k in top], probs=probs)


if __name__ == "__main__":
    main(sys.argv[1:])
