"""From a weights file to a model and back: :func:`load_pretrained`, :func:`save_weights`."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np

from minivit import memory
from minivit.atomic import atomic_write
from minivit.pretrained.errors import WeightsError
from minivit.pretrained.formats import load_weights
from minivit.pretrained.google import to_google
from minivit.pretrained.presets import PRESETS
from minivit.pretrained.resample import resample_pos_embed
from minivit.vit import ViT

__all__ = ["config_from_state_dict", "load_pretrained", "save_weights"]


def config_from_state_dict(state: dict, heads: int | None = None) -> dict:
    """The ViT constructor arguments a timm-named state dict implies.

    The number of heads is not in the shapes of timm's tensors: pass it (a
    preset or Google's file gives it), else heads of 64 dimensions are
    assumed, as in every timm ViT preset.
    """
    dim = state["cls_token"].shape[-1]
    proj = state["patch_embed.proj.weight"]
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    tokens = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise WeightsError(f"pos_embed has {tokens} patch positions: not a square grid")
    head = state.get("head.weight")
    pre = state.get("pre_logits.fc.weight")
    return dict(image_size=grid * proj.shape[-1], patch_size=proj.shape[-1],
                in_channels=proj.shape[1], dim=dim, depth=depth,
                heads=heads or max(1, dim // 64),
                mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
                num_classes=head.shape[0] if head is not None else 1000,
                qkv_bias="blocks.0.attn.qkv.bias" in state,
                pool="avg" if "fc_norm.weight" in state else "cls",
                pre_logits=pre.shape[0] if pre is not None else None,
                gelu="exact", norm_eps=1e-6, pos_embed="learned")



def load_pretrained(path, preset: str | None = None, num_classes: int | None = None,
                    image_size: int | None = None, strict: bool = True, log=print, **overrides):
    """Build a ViT from a weights file and load it.

    Args:
        path: .safetensors, Google .npz, minivit .npz checkpoint or .pth.
        preset: a name of :data:`PRESETS` for the architecture (else it is
            read from the file; see :func:`config_from_state_dict`).
        num_classes: a new head of this size (freshly initialised) when it
            differs from the file's.
        image_size: another input size: the position embedding is resampled.
        strict: every tensor must match (else one error lists the problems).
        log: where notes go (the new head, the resampling).
    Returns:
        The model, in eval mode.
    """
    state, info = load_weights(path)
    if preset:
        if preset not in PRESETS:
            raise WeightsError(f"unknown preset {preset!r}; the presets are: "
                               f"{', '.join(PRESETS)}")
        config = dict(PRESETS[preset])
    elif info.get("config"):                 # minivit's own checkpoint says what it is
        config = dict(info["config"])
    else:
        config = config_from_state_dict(state, info.get("heads"))
    file_classes = state["head.weight"].shape[0] if "head.weight" in state else None
    config.update(overrides)
    if num_classes is not None:
        config["num_classes"] = num_classes
    if image_size is not None:
        config["image_size"] = image_size
    model = ViT(**config)
    if file_classes is not None and file_classes != config["num_classes"]:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        log(f"{path}: head of {file_classes} classes replaced by a new one of "
            f"{config['num_classes']} (freshly initialised)")
    new_tokens = model.pos_embed.shape[1]
    if state["pos_embed"].shape[1] != new_tokens:
        old = state["pos_embed"].shape[1]
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], math.isqrt(new_tokens - 1))
        log(f"{path}: position embedding resampled from {old - 1} to {new_tokens - 1} "
            "patch positions (bicubic, as timm)")
    if "head.weight" not in state:           # a new head: keep the model's own
        state.update((k, v) for k, v in model.state_dict().items() if k.startswith("head."))
    try:            # Module.load_state_dict lists every missing, unexpected, mis-shaped key
        model.load_state_dict(state, strict=strict)
    except ValueError as exc:
        raise WeightsError(f"{path} does not fit the model (pick the matching preset). "
                           f"{exc}") from None
    del state                # the file's arrays, now copied into the model:
    memory.release_freed_memory()   # give them back (minivit.memory keeps freed memory)
    return model.eval()



def save_weights(model, path, overwrite: bool = False) -> str:
    """Write ``model``'s weights as ``.safetensors`` (timm's names, loads into
    timm with strict=True) or as Google's ``.npz`` (any other extension is
    refused). Atomic; an existing file is kept unless ``overwrite``."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    state = {k: np.ascontiguousarray(v) for k, v in model.state_dict().items()}
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import save
        except ImportError:
            raise ImportError("writing .safetensors needs the safetensors package: pip "
                              "install -e '.[pretrained]'") from None
        # timm ignores the metadata; minivit reads its config back from it
        payload = save(state, metadata={"format": "pt",
                                        "minivit_config": json.dumps(model.config)})
    elif path.endswith(".npz"):
        import io
        if model.config.get("pool") != "cls" or not model.config.get("qkv_bias", True):
            raise WeightsError("Google's .npz layout has class-token pooling and qkv biases; "
                               "save this model as .safetensors instead")
        buffer = io.BytesIO()
        np.savez(buffer, **to_google(state, model.config["heads"]))
        payload = buffer.getvalue()
    else:
        raise WeightsError(f"{path}: save as .safetensors (timm) or .npz (Google's layout)")
    with atomic_write(path, "wb") as f:
        f.write(payload)
    return path
