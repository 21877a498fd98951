"""Reading weights files: timm/Hugging Face ``.safetensors``, Google's and
minivit's ``.npz``, PyTorch ``.pth``, each into a timm-named state dict."""

from __future__ import annotations

import json
import os
import struct
import warnings

import numpy as np

from minivit.pretrained.errors import WeightsError
from minivit.pretrained.google import from_google, is_google

__all__ = ["load_weights", "file_config"]

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


def file_config(path) -> dict | None:
    """The model config a minivit-written file records, read without its
    tensors; None for timm's, Google's and PyTorch files (and unreadable ones)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return _safetensors_config(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "metadata" in f.files:
                return json.loads(str(f["metadata"])).get("config", {}).get("model")
    except (OSError, ValueError, KeyError, AttributeError):
        return None
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
    return arrays, "google" if is_google(arrays) else "npz", None


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

