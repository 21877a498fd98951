"""What the options turn into: the data (loaded, subset, resized, normalised)
and the model (from the flags, a timm preset, or pretrained weights).
"""

from __future__ import annotations

import numpy as np

from minivit import viz
from minivit.cli.options import IMAGE_FOLDER
from minivit.data import (
    DataError,
    channel_stats,
    get_dataset_info,
    load_dataset,
    load_image_folder,
    normalize,
)
from minivit.pretrained import PRESETS as PRESETS_TIMM
from minivit.pretrained import EvalTransform, WeightsError, create_model, load_pretrained
from minivit.pretrained.formats import file_config
from minivit.pretrained.preprocess import is_timm_photo_model
from minivit.vit import ViT

__all__ = ["model_kwargs", "resize_images", "build_model", "pretrained_photo_transform",
           "load_data"]


def model_kwargs(args, image_size: int, in_channels: int, num_classes: int) -> dict:
    """The ViT's constructor arguments from the parsed options."""
    return dict(image_size=image_size, patch_size=args.patch_size, in_channels=in_channels,
                num_classes=num_classes, dim=args.dim, depth=args.depth, heads=args.heads,
                mlp_dim=args.mlp_dim, dropout=args.dropout, attn_dropout=args.attn_dropout,
                pool=args.pool, pos_embed=args.pos_embed, seed=args.seed)


def resize_images(images, size: int, chunk: int = 2048):
    """Bilinear resize of raw uint8 images (N, [C,] H, W) to size x size, uint8."""
    out = np.empty((*images.shape[:-2], size, size), dtype=np.uint8)
    for start in range(0, len(images), chunk):          # bounded float64 temporaries
        resized = viz.upsample(images[start:start + chunk], size, mode="bilinear")
        out[start:start + chunk] = np.clip(np.rint(resized), 0, 255)
    return out


def build_model(args, train, test, names, say=print):
    """The ViT the options ask for: from ``--weights`` (head and position
    embedding adapted), a ``--model`` preset, or the model flags. Grayscale
    data given to a 3-channel model is repeated over the channels.

    Returns:
        (model, train, test), the data possibly with repeated channels.
    """
    x_train = train[0]
    size, channels = x_train.shape[-1], x_train.shape[1]
    classes = args.num_classes or len(names)
    if classes < len(names):
        raise DataError(f"--num-classes {classes} is fewer than the dataset's "
                        f"{len(names)} classes")
    if not (args.weights or args.model):
        return ViT(**model_kwargs(args, size, channels, classes)), train, test
    try:
        if args.weights:
            model = load_pretrained(args.weights, preset=args.model, num_classes=classes,
                                    image_size=size, log=say).train()
        else:
            model = create_model(args.model, num_classes=classes, image_size=size,
                                 in_channels=channels, seed=args.seed)
    except WeightsError:
        raise
    except ValueError as exc:       # e.g. 28-px images and 16-px patches
        raise DataError(f"{exc}. The images are {size} px: resize them with --image-size "
                        "(e.g. 32 or 224 for 16-px patches)") from None
    wanted = model.config["in_channels"]
    if wanted != channels:
        if channels != 1:
            raise DataError(f"the model takes {wanted}-channel images, the data has "
                            f"{channels} channels")
        say(f"grayscale images repeated over the model's {wanted} channels")
        train = (train[0].repeat(wanted, axis=1), train[1])
        test = (test[0].repeat(wanted, axis=1), test[1])
    return model, train, test


def pretrained_photo_transform(args) -> EvalTransform | None:
    """timm's evaluation transform, for an RGB image folder and a timm model
    (``--model``, or ``--weights`` of a timm architecture: see
    :func:`~minivit.pretrained.preprocess.is_timm_photo_model`), at
    ``--image-size`` or the preset's size; None otherwise. Both splits are
    prepared with it, as examples/predict.py prepares photos for the model."""
    if args.dataset != IMAGE_FOLDER or args.channels != 3 or not (args.weights or args.model):
        return None
    preset = args.model if args.model in PRESETS_TIMM else None
    config = PRESETS_TIMM[preset] if preset else file_config(args.weights) if args.weights \
        else None
    if not is_timm_photo_model(config or {"in_channels": 3, "gelu": "exact"}):
        return None          # a from-scratch minivit checkpoint: read as it was trained
    size = args.image_size or (PRESETS_TIMM[preset]["image_size"] if preset else 224)
    return EvalTransform.for_preset(preset, size) if preset else EvalTransform(size)


def load_data(args, quiet: bool | None = None):
    """Load, subset and normalise the data the options ask for (``quiet``:
    no download messages; default ``args.quiet``).

    Returns:
        (x_train, y_train), (x_test, y_test) as host arrays (x float
        (N, C, H, W) normalised in ``args.dtype``), class names, mean, std,
        and a description of the evaluation set.
    """
    if args.dataset == IMAGE_FOLDER:
        if args.data_dir is None:
            raise DataError("--dataset imagefolder needs --data-dir: a folder with one "
                            "subfolder of images per class")
        photos = pretrained_photo_transform(args)
        if photos is not None and not (args.quiet if quiet is None else quiet):
            print(f"images prepared as timm's eval transform for a pretrained model: shorter "
                  f"side {photos.scale_size} ({photos.interpolation}), centre crop "
                  f"{photos.image_size}, mean {photos.mean}, std {photos.std}")
        folder = load_image_folder(args.data_dir, args.image_size, args.channels,
                                   args.test_fraction, args.seed,
                                   prepare=photos.resize_and_crop if photos else None)
        x_train, y_train, x_test, y_test = folder[:4]
        names, evaluated_on = folder.class_names, f"test images: {folder.test_source}"
        default = (photos.mean, photos.std) if photos else channel_stats(x_train)
        mean = args.mean if args.mean is not None else default[0]
        std = args.std if args.std is not None else default[1]
    else:
        info = get_dataset_info(args.dataset)
        x_train, y_train, x_test, y_test = load_dataset(
            info, args.data_dir, quiet=args.quiet if quiet is None else quiet)
        names, mean, std, evaluated_on = info.class_names, info.mean, info.std, "test set"
    if args.val_split:
        if args.val_split >= len(x_train):
            raise ValueError(f"--val-split {args.val_split} leaves no training images "
                             f"(there are {len(x_train)})")
        x_test, y_test = x_train[-args.val_split:], y_train[-args.val_split:]
        x_train, y_train = x_train[:-args.val_split], y_train[:-args.val_split]
        evaluated_on = f"validation split (last {args.val_split} training images)"
    if args.train_subset:
        x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
    if args.test_subset:
        x_test, y_test = x_test[:args.test_subset], y_test[:args.test_subset]
    if args.image_size and args.image_size != x_train.shape[-1]:     # after subsetting
        x_train, x_test = (resize_images(x, args.image_size) for x in (x_train, x_test))
    # Host float arrays, normalised once; batches move to the device later.
    x_train = normalize(x_train, mean, std, dtype=args.dtype)
    x_test = normalize(x_test, mean, std, dtype=args.dtype)
    return (x_train, y_train), (x_test, y_test), list(names), mean, std, evaluated_on
