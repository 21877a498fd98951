"""timm's Vision Transformers: their hyper-parameters and evaluation settings.

:data:`PRESETS` holds the ViT constructor arguments of each timm model
(exact GELU, LayerNorm eps 1e-6, qkv bias, class-token pooling);
:data:`PRETRAINED_CFG` the ``pretrained_cfg`` of its default weights (tag),
which say how timm prepares an image for it (:mod:`minivit.pretrained.preprocess`).
"""

from __future__ import annotations

from minivit.pretrained.errors import WeightsError
from minivit.vit import ViT

__all__ = ["PRESETS", "PRETRAINED_CFG", "create_model"]

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


# timm 1.0.31's ``timm.create_model(name, pretrained=False).pretrained_cfg`` for
# each preset's default tag (the first listed in timm's ``default_cfgs``), as
# ``timm.data.resolve_data_config({}, model=model)`` reads it: ``crop_pct``,
# ``interpolation``, ``mean`` and ``std`` (crop mode "center").
_AUGREG = dict(crop_pct=0.9, interpolation="bicubic", mean=(0.5, 0.5, 0.5),
               std=(0.5, 0.5, 0.5), crop_mode="center")
PRETRAINED_CFG: dict[str, dict] = {
    "vit_tiny_patch16_224": dict(_AUGREG, tag="augreg_in21k_ft_in1k"),
    "vit_small_patch16_224": dict(_AUGREG, tag="augreg_in21k_ft_in1k"),
    "vit_base_patch16_224": dict(_AUGREG, tag="augreg2_in21k_ft_in1k"),
    "vit_base_patch32_224": dict(_AUGREG, tag="augreg_in21k_ft_in1k"),
    "vit_large_patch16_224": dict(_AUGREG, tag="augreg_in21k_ft_in1k"),
}


def create_model(name: str, **overrides) -> ViT:
    """A ViT with the hyper-parameters of the timm model ``name`` (random
    weights); ``overrides`` change any of them (e.g. ``num_classes=10``)."""
    if name not in PRESETS:
        raise WeightsError(f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)}")
    return ViT(**{**PRESETS[name], **overrides})
