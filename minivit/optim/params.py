"""What an optimizer is given: Parameters, (name, Parameter) pairs, Modules,
and the usual split into a decayed and a non-decayed param group."""

from __future__ import annotations

from minivit.module import Module, Parameter

__all__ = ["DEFAULT_NO_DECAY", "param_groups_weight_decay"]

# Names that never get weight decay, besides biases and 1-D tensors (timm's
# VisionTransformer.no_weight_decay()).
DEFAULT_NO_DECAY = ("cls_token", "pos_embed", "dist_token", "reg_token")


def _named(items, start: int = 0):
    """Split an iterable of Parameters or (name, Parameter) pairs.

    Returns ``(params, keys)``; an unnamed parameter gets its running index
    (``start``, ``start + 1``, ...) as key, like torch's state_dict.
    """
    if isinstance(items, Module):
        items = items.named_parameters()
    elif isinstance(items, Parameter):
        items = [items]
    params, keys = [], []
    for item in items:
        if isinstance(item, Parameter):
            name, param = None, item
        elif (isinstance(item, tuple) and len(item) == 2
              and isinstance(item[1], Parameter)):
            name, param = item
        else:
            raise TypeError(
                "expected Parameters or (name, Parameter) pairs, got "
                f"{type(item).__name__}; pass model.named_parameters() or "
                "model.parameters()"
            )
        if not param.requires_grad:
            continue  # fixed arrays (e.g. sin-cos position embedding)
        keys.append(str(name) if name is not None else str(start + len(params)))
        params.append(param)
    return params, keys


def _iter_params(params):
    """Parameters from Parameters, (name, Parameter) pairs or a Module."""
    if isinstance(params, Module):
        return params.parameters()
    if isinstance(params, Parameter):
        return [params]
    return [item[1] if isinstance(item, tuple) else item for item in params]


def param_groups_weight_decay(named_params, weight_decay: float,
                              no_decay=DEFAULT_NO_DECAY) -> list[dict]:
    """Split parameters into a decayed and a non-decayed group (as timm).

    No decay for: biases (name ``*.bias``), every parameter with ndim <= 1
    (LayerNorm weights), and names in ``no_decay`` (an exact name, or a
    name's last component, e.g. ``cls_token``, ``pos_embed``). Decaying those
    would pull LayerNorm gains and the tokens towards zero for no benefit.
    Parameters with ``requires_grad=False`` are left out.

    Args:
        named_params: ``model.named_parameters()`` or a Module.
        weight_decay: decay of the first group.
    Returns:
        ``[{"params": [(name, p), ...], "weight_decay": weight_decay},
        {"params": [...], "weight_decay": 0.0}]`` for any optimizer here.
    """
    if isinstance(named_params, Module):
        named_params = named_params.named_parameters()
    skip = set(no_decay)
    decay, no = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        if (param.data.ndim <= 1 or name.endswith(".bias") or name == "bias"
                or name in skip or last in skip):
            no.append((name, param))
        else:
            decay.append((name, param))
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no, "weight_decay": 0.0}]
