"""Pretrained Vision Transformers: timm's presets, and the files people have.

One concern per module:

* :mod:`~minivit.pretrained.presets`: :data:`PRESETS` and :func:`create_model`
  (``vit_tiny_patch16_224`` ... ``vit_large_patch16_224`` with timm's
  hyper-parameters, creatable without weights) and :data:`PRETRAINED_CFG`
  (how timm prepares images for each);
* :mod:`~minivit.pretrained.preprocess`: :class:`EvalTransform`, timm's
  evaluation transform pixel for pixel, and :func:`open_rgb` for photos;
* :mod:`~minivit.pretrained.formats`: :func:`load_weights` reads a checkpoint
  into a timm-named state dict: timm/Hugging Face ``.safetensors``, Google's
  original ``.npz``, PyTorch ``.pth`` (where torch is installed) and
  minivit's own ``.npz`` checkpoints;
* :mod:`~minivit.pretrained.google`: Google's JAX layout <-> timm's names;
* :mod:`~minivit.pretrained.resample`: the position embedding resampled to
  another image size, as timm does;
* :mod:`~minivit.pretrained.loading`: :func:`load_pretrained` builds the
  model a file describes (or a preset), resamples, replaces the head for
  another number of classes, and loads strictly (every missing, unexpected
  or wrongly shaped tensor is named in one error); :func:`save_weights`
  writes ``.safetensors`` (timm's names) or Google's ``.npz``, atomically.

Everything is importable from here: ``from minivit.pretrained import
load_pretrained, save_weights, create_model, PRESETS, WeightsError``.
"""

from minivit.pretrained.errors import WeightsError
from minivit.pretrained.formats import load_weights
from minivit.pretrained.google import from_google, to_google
from minivit.pretrained.loading import config_from_state_dict, load_pretrained, save_weights
from minivit.pretrained.preprocess import EvalTransform, ImageError, open_rgb
from minivit.pretrained.presets import PRESETS, PRETRAINED_CFG, create_model
from minivit.pretrained.resample import RESAMPLE_MODES, resample_pos_embed, resampling_weights

__all__ = [
    "PRESETS",
    "PRETRAINED_CFG",
    "WeightsError",
    "create_model",
    "load_weights",
    "load_pretrained",
    "save_weights",
    "config_from_state_dict",
    "resample_pos_embed",
    "resampling_weights",
    "RESAMPLE_MODES",
    "from_google",
    "to_google",
    "EvalTransform",
    "ImageError",
    "open_rgb",
]
