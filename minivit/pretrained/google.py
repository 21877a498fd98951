"""Google's original ViT checkpoints (the JAX ``.npz`` layout) <-> timm's names.
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

import re

import numpy as np

from minivit.pretrained.errors import WeightsError

__all__ = ["from_google", "to_google", "is_google"]

_G_BLOCK = "Transformer/encoderblock_{}/"
_G_ATTN = "MultiHeadDotProductAttention_1/"


def is_google(keys) -> bool:
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

