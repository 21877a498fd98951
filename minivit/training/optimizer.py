"""The optimizer a run trains with, built from its :class:`~minivit.config.TrainConfig`.

Weight matrices get weight decay and everything else (biases, LayerNorm
gains, tokens, position embeddings) none, as timm decides it
(:func:`minivit.optim.param_groups_weight_decay`); when fine-tuning, the
head and the backbone may learn at different rates (:func:`split_head_groups`).
"""

from __future__ import annotations

from minivit.optim import SGD, AdamW, param_groups_weight_decay

__all__ = ["make_optimizer", "split_head_groups"]


def make_optimizer(model, config):
    """AdamW or SGD (``config.optimizer``) over ``model``'s parameter groups."""
    groups = param_groups_weight_decay(model.named_parameters(), config.weight_decay)
    if config.backbone_lr_scale != 1.0:            # fine-tuning: the head vs the rest
        groups = split_head_groups(groups, config.backbone_lr_scale)
    groups = [g for g in groups if g["params"]]    # e.g. no 1-D params at all
    if config.optimizer == "adamw":
        return AdamW(groups, lr=config.lr)
    return SGD(groups, lr=config.lr, momentum=config.momentum)


def split_head_groups(groups: list[dict], backbone_lr_scale: float) -> list[dict]:
    """Each parameter group split into the head (``head.*``, full lr) and the
    backbone (lr x ``backbone_lr_scale``; left out when that is 0, so the
    optimizer never touches it: a frozen backbone)."""
    out = []
    for group in groups:
        head = [(n, p) for n, p in group["params"] if n.startswith("head.")]
        body = [(n, p) for n, p in group["params"] if not n.startswith("head.")]
        out.append({**group, "params": head})
        if backbone_lr_scale > 0:
            out.append({**group, "params": body, "lr_scale": backbone_lr_scale})
    return out
