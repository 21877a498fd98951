"""Pretrained Vision Transformers: timm's presets, and the files people have.

* :data:`PRESETS` and :func:`create_model`: ``vit_tiny_patch16_224`` ...
  ``vit_large_patch16_224`` with timm's hyper-parameters (exact GELU,
  LayerNorm eps 1e-6, qkv bias, class-token pooling), creatable without weights.
* :func:`load_weights` reads a checkpoint into a timm-named state dict:
  timm/Hugging Face ``.safetensors``, Google's original ``.npz`` (the JAX
  layout: HWIO convolution, per-head attention kernels), PyTorch ``.pth``
  (where torch is installed) and minivit's own ``.npz`` checkpoints.
* :func:`load_pretrained` builds the model a file describes (or a preset),
  resamples the position embedding to another image size, replaces the head
  for another number of classes, and loads strictly: every missing,
  unexpected or wrongly shaped tensor is named in one error.
* :func:`save_weights` writes a model as ``.safetensors`` (timm's names) or as
  Google's ``.npz``, atomically, never over an existing file unless asked.

Google's layout, for one block ``i`` (prefix ``Transformer/encoderblock_{i}/``),
and where each tensor goes (D = dim, H = heads, hd = D / H, M = mlp_dim)::

    LayerNorm_0/{scale,bias}                          blocks.i.norm1.{weight,bias}
    MultiHeadDotProductAttention_1/query/kernel (D, H, hd)   rows [0, D) of attn.qkv.weight,
        as kernel.reshape(D, D).T  (key: rows [D, 2D), value: [2D, 3D); biases (H, hd) flattened)
    MultiHeadDotProductAttention_1/out/kernel (H, hd, D)     attn.proj.weight = kernel.reshape(D, D).T
    LayerNorm_2/{scale,bias}                          blocks.i.norm2.{weight,bias}
    MlpBlock_3/Dense_0/kernel (D, M)                  mlp.fc1.weight = kernel.T   (Dense_1: fc2)

and outside the blocks: ``embedding/kernel`` (P, P, C, D) -> ``patch_embed.proj.weight``
(D, C, P, P) by transpose(3, 2, 0, 1); ``cls``; ``Transformer/posembed_input/pos_embedding``;
``Transformer/encoder_norm`` -> ``norm``; ``pre_logits`` -> ``pre_logits.fc``; ``head``
(kernels transposed).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings

import numpy as np

from minivit import memory
from minivit.atomic import atomic_write
from minivit.vit import ViT

__all__ = [
    "PRESETS",
    "WeightsError",
    "create_model",
    "load_weights",
    "load_pretrained",
    "save_weights",
    "config_from_state_dict",
    "resample_pos_embed",
    "from_google",
    "to_google",
]

_TIMM = dict(image_size=224, in_channels=3, num_classes=1000, gelu="exact", norm_eps=1e-6,
             qkv_bias=True, pool="cls", pos_embed="learned")
PRESETS: dict[str, dict] = {
    "vit_tiny_patch16_224": dict(_TIMM, patch_size=16, dim=192, depth=12, heads=3, mlp_dim=768),
    "vit_small_patch16_224": dict(_TIMM, patch_size=16, dim=384, depth=12, heads=6, mlp_dim=1536),
    "vit_base_patch16_224": dict(_TIMM, patch_size=16, dim=768, depth=12, heads=12, mlp_dim=3072),
    "vit_base_patch32_224": dict(_TIMM, patch_size=32, dim=768, depth=12, heads=12, mlp_dim=3072),
    "vit_large_patch16_224": dict(_TIMM, patch_size=16, dim=1024, depth=24, heads=16,
                                  mlp_dim=4096),
}


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, not a ViT, or not
    matching the model (the message lists every problem)."""


def create_model(name: str, **overrides) -> ViT:
    """A ViT with the hyper-parameters of the timm model ``name`` (random
    weights); ``overrides`` change any of them (e.g. ``num_classes=10``)."""
    if name not in PRESETS:
        raise WeightsError(f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)}")
    return ViT(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------
# Google's .npz <-> timm names
# --------------------------------------------------------------------------
_G_BLOCK = "Transformer/encoderblock_{}/"
_G_ATTN = "MultiHeadDotProductAttention_1/"


def _is_google(keys) -> bool:
    return "embedding/kernel" in keys or any(k.startswith("Transformer/") for k in keys)


def from_google(arrays: dict) -> tuple[dict, int]:
    """Google's arrays -> (timm-named state dict, number of heads)."""
    g = dict(arrays)
    out: dict[str, np.ndarray] = {}

    def take(key):
        if key not in g:
            raise WeightsError(f"Google checkpoint: missing {key}")
        return np.asarray(g.pop(key))

    kernel = take("embedding/kernel")                                 # (P, P, C, D)
    out["patch_embed.proj.weight"] = kernel.transpose(3, 2, 0, 1)     # (D, C, P, P)
    out["patch_embed.proj.bias"] = take("embedding/bias")
    out["cls_token"] = take("cls")
    out["pos_embed"] = take("Transformer/posembed_input/pos_embedding")
    dim = kernel.shape[-1]
    depth = len({m.group(1) for k in list(g)
                 if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    heads = None
    for i in range(depth):
        p, t = _G_BLOCK.format(i), f"blocks.{i}."
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[t + name + ".weight"] = take(f"{p}{ln}/scale")
            out[t + name + ".bias"] = take(f"{p}{ln}/bias")
        q, k, v = (take(f"{p}{_G_ATTN}{n}/kernel") for n in ("query", "key", "value"))
        heads = q.shape[1]                                            # (D, H, hd)
        out[t + "attn.qkv.weight"] = np.concatenate([w.reshape(dim, dim).T for w in (q, k, v)])
        bias_keys = [f"{p}{_G_ATTN}{n}/bias" for n in ("query", "key", "value")]
        if all(b in g for b in bias_keys):
            out[t + "attn.qkv.bias"] = np.concatenate([take(b).reshape(-1) for b in bias_keys])
        out[t + "attn.proj.weight"] = take(f"{p}{_G_ATTN}out/kernel").reshape(dim, dim).T
        out[t + "attn.proj.bias"] = take(f"{p}{_G_ATTN}out/bias")
        for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[f"{t}mlp.{name}.weight"] = take(f"{p}MlpBlock_3/{dense}/kernel").T
            out[f"{t}mlp.{name}.bias"] = take(f"{p}MlpBlock_3/{dense}/bias")
    out["norm.weight"] = take("Transformer/encoder_norm/scale")
    out["norm.bias"] = take("Transformer/encoder_norm/bias")
    if "pre_logits/kernel" in g:
        out["pre_logits.fc.weight"] = take("pre_logits/kernel").T
        out["pre_logits.fc.bias"] = take("pre_logits/bias")
    if "head/kernel" in g:
        out["head.weight"] = take("head/kernel").T
        out["head.bias"] = take("head/bias")
    if g:
        raise WeightsError("Google checkpoint: tensors minivit does not know: "
                           + ", ".join(sorted(g)[:12]) + (" ..." if len(g) > 12 else ""))
    return out, heads


def to_google(state: dict, heads: int) -> dict:
    """timm-named state dict -> Google's names and layouts (inverse of :func:`from_google`)."""
    s = {k: np.asarray(v) for k, v in state.items()}
    dim = s["cls_token"].shape[-1]
    hd = dim // heads
    out = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "cls": s["cls_token"],
        "Transformer/posembed_input/pos_embedding": s["pos_embed"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
        "head/kernel": s["head.weight"].T,
        "head/bias": s["head.bias"],
    }
    if "pre_logits.fc.weight" in s:
        out["pre_logits/kernel"] = s["pre_logits.fc.weight"].T
        out["pre_logits/bias"] = s["pre_logits.fc.bias"]
    i = 0
    while f"blocks.{i}.norm1.weight" in s:
        p, t = _G_BLOCK.format(i), f"blocks.{i}."
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{p}{ln}/scale"] = s[t + name + ".weight"]
            out[f"{p}{ln}/bias"] = s[t + name + ".bias"]
        qkv = s[t + "attn.qkv.weight"]
        for j, n in enumerate(("query", "key", "value")):
            out[f"{p}{_G_ATTN}{n}/kernel"] = qkv[j * dim:(j + 1) * dim].T.reshape(dim, heads, hd)
            if t + "attn.qkv.bias" in s:
                out[f"{p}{_G_ATTN}{n}/bias"] = \
                    s[t + "attn.qkv.bias"][j * dim:(j + 1) * dim].reshape(heads, hd)
        out[f"{p}{_G_ATTN}out/kernel"] = s[t + "attn.proj.weight"].T.reshape(heads, hd, dim)
        out[f"{p}{_G_ATTN}out/bias"] = s[t + "attn.proj.bias"]
        for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[f"{p}MlpBlock_3/{dense}/kernel"] = s[f"{t}mlp.{name}.weight"].T
            out[f"{p}MlpBlock_3/{dense}/bias"] = s[f"{t}mlp.{name}.bias"]
        i += 1
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32}


def _read_safetensors(path: str) -> dict:
    """All tensors of a .safetensors file as NumPy arrays; bfloat16 becomes
    float32 (exactly: bf16 is the top half of a float32), with a note."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError("reading .safetensors needs the safetensors package: pip install "
                          "-e '.[pretrained]'") from None
    try:
        return load_file(path)
    except Exception as exc:       # bf16 (NumPy has no such dtype), or a damaged file
        header, start = _safetensors_header(path, exc)
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    unknown = dtypes - set(_SAFETENSORS_DTYPES) - {"BF16"}
    if unknown:
        raise WeightsError(f"{path}: tensors of dtype {', '.join(sorted(unknown))}, which "
                           "minivit does not support (float64/32/16 and bfloat16 are)")
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            f.seek(start + lo)
            raw = f.read(hi - lo)
            if len(raw) != hi - lo:
                raise WeightsError(f"{path} is truncated: tensor {name} ends at byte "
                                   f"{start + hi} but the file is shorter")
            if info["dtype"] == "BF16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[info["dtype"]]).copy()
            out[name] = arr.reshape(info["shape"])
    if "BF16" in dtypes:
        warnings.warn(f"{path}: bfloat16 tensors converted to float32 (exact)", stacklevel=3)
    return out


def _safetensors_config(path: str) -> dict | None:
    """The model config minivit writes into a file's metadata (None elsewhere)."""
    try:
        meta = _safetensors_header(path, None)[0].get("__metadata__") or {}
        return json.loads(meta["minivit_config"]) if "minivit_config" in meta else None
    except (WeightsError, ValueError):
        return None


def _safetensors_header(path: str, cause: Exception | None) -> tuple[dict, int]:
    """(the JSON header, the byte where the tensor data starts): a u64 length,
    then that many bytes of JSON, is the whole safetensors layout."""
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > os.path.getsize(path) - 8:
                raise ValueError("header longer than the file")
            return json.loads(f.read(size)), 8 + size
    except (OSError, ValueError, struct.error) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({cause or exc}); "
                           "it may be truncated or of another format") from None


def _read_npz(path: str) -> tuple[dict, str, dict | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable .npz file ({exc}); it may be "
                           "truncated or of another format") from None
    if "metadata" in arrays and any(k.startswith("model/") for k in arrays):
        config = json.loads(str(arrays["metadata"])).get("config", {}).get("model")
        return ({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")},
                "minivit", config)
    return arrays, "google" if _is_google(arrays) else "npz", None


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path}: reading a PyTorch file needs torch (pip install torch); "
                          "or convert it to .safetensors") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable PyTorch file ({exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in obj.items() if hasattr(v, "numpy")}


def load_weights(path) -> tuple[dict, dict]:
    """Read a weights file. Returns (timm-named state dict of host arrays,
    info) where info has ``format`` and, when the file says, ``heads``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    info: dict = {}
    if path.endswith(".safetensors"):
        state, info["format"] = _read_safetensors(path), "safetensors"
        info["config"] = _safetensors_config(path)
    elif head[:2] == b"PK" and path.endswith((".pth", ".pt", ".bin")):
        state, info["format"] = _read_torch(path), "pytorch"
    elif head[:2] == b"PK" or path.endswith(".npz"):
        state, info["format"], info["config"] = _read_npz(path)
        if info["format"] == "google":
            state, info["heads"] = from_google(state)
    else:
        raise WeightsError(f"{path}: not a weights file minivit reads (.safetensors, .npz "
                           "from Google or minivit, .pth/.pt)")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    _check_is_vit(path, state)
    bad = [f"{k} ({v.dtype})" for k, v in state.items() if np.asarray(v).dtype.kind != "f"]
    if bad:
        raise WeightsError(f"{path}: tensors of a dtype minivit does not support: "
                           f"{', '.join(bad[:8])}; weights must be floating point "
                           "(float64, float32, float16 or bfloat16)")
    return state, info


_VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")


def _check_is_vit(path: str, state: dict) -> None:
    missing = [k for k in _VIT_KEYS if k not in state]
    if missing:
        sample = ", ".join(list(state)[:6]) or "nothing"
        raise WeightsError(
            f"{path} is not a Vision Transformer checkpoint with timm's names: it lacks "
            f"{', '.join(missing)} (it holds {sample}{' ...' if len(state) > 6 else ''}). "
            "minivit loads timm/Google ViTs only (no class token or other architectures)")


# --------------------------------------------------------------------------
# From a state dict to a model
# --------------------------------------------------------------------------
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


RESAMPLE_MODES = ("bicubic", "bilinear")


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int, mode: str = "bicubic") -> np.ndarray:
    """(1, 1 + g*g, D) -> (1, 1 + new_grid^2, D): the class token's row kept,
    the g x g grid of patch positions resized in 2-D.

    ``mode="bicubic"`` (the default) is what timm's ``resample_abs_pos_embed``
    does: PyTorch's ``interpolate(mode="bicubic", antialias=True,
    align_corners=False)``; ``"bilinear"`` the same with linear weights (also
    antialiased when shrinking). Both are separable: one (new, g) matrix of
    weights per axis, ``grid_new = Wr @ grid @ Wc^T`` for every channel.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    pos_embed = np.asarray(pos_embed)
    cls, grid_rows = pos_embed[:, :1], pos_embed[0, 1:]
    old = math.isqrt(grid_rows.shape[0])
    if old * old != grid_rows.shape[0]:
        raise WeightsError(f"pos_embed has {grid_rows.shape[0]} patch positions: not a square grid")
    if old == new_grid:
        return pos_embed
    table = grid_rows.reshape(old, old, -1).astype(np.float64)          # (g, g, D)
    weights = resampling_weights(old, new_grid, mode)                    # (new, g)
    grid = np.einsum("ri,ijd,cj->rcd", weights, table, weights)          # (new, new, D)
    out = grid.reshape(1, new_grid * new_grid, -1).astype(pos_embed.dtype)
    return np.concatenate([cls, out], axis=1)


def resampling_weights(n_in: int, n_out: int, mode: str = "bicubic") -> np.ndarray:
    """(n_out, n_in) weights of antialiased 1-D resampling, pixel centres
    aligned (``align_corners=False``): output i is centred at input coordinate
    (i + 0.5) n_in / n_out; when shrinking, the kernel is widened by the
    scale (antialiasing); each row is normalised to sum 1 over the inputs it
    reaches, so borders need no padding. Bicubic uses Keys' kernel with
    a = -0.5, as PyTorch's antialiased path and PIL do."""
    def cubic(t, a=-0.5):
        t = np.abs(t)
        return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        np.where(t < 2, ((t - 5) * t + 8) * t * a - 4 * a, 0.0))

    def linear(t):
        return np.maximum(0.0, 1.0 - np.abs(t))

    kernel, radius = (cubic, 2.0) if mode == "bicubic" else (linear, 1.0)
    scale = n_in / n_out
    stretch = max(scale, 1.0)                    # widen the kernel only when shrinking
    centres = (np.arange(n_out) + 0.5) * scale                           # (n_out,)
    lo = np.maximum((centres - radius * stretch + 0.5).astype(int), 0)
    hi = np.minimum((centres + radius * stretch + 0.5).astype(int), n_in)
    j = np.arange(n_in)
    w = kernel((j[None, :] - centres[:, None] + 0.5) / stretch)
    w *= (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    return w / w.sum(axis=1, keepdims=True)


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


# --------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------
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
