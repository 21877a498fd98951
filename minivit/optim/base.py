"""The Optimizer base class: what every optimizer here shares."""

from __future__ import annotations

from collections.abc import Mapping

from minivit.module import Module
from minivit.optim.params import _named
from minivit.optim.state import _as_hyper, flatten_state, restore_state

__all__ = ["Optimizer"]


class Optimizer:
    """Parameter groups, per-parameter state, ``step``/``zero_grad``, save/load.

    Attributes:
        param_groups: list of dicts ``{"params": [Parameter], "names": [str],
            <hyperparameter>: value}``; change ``param_groups[i]["lr"]`` to set
            a group's learning rate.
        state: ``{param key: {buffer name: array (param's shape and dtype) or
            int counter}}``; the key is the timm name, or the parameter's
            index when unnamed.
        step_count: number of ``step()`` calls so far.

    Subclasses set ``_state_keys`` (the complete state of one parameter,
    ``_counters`` being the integer ones), implement ``_check`` (validate a
    group's hyperparameters) and ``_update`` (one parameter's update), and
    may override ``_update_group`` (a whole group's updates at once).
    """

    _state_keys: tuple[str, ...] = ()
    _counters: tuple[str, ...] = ()
    _extra_group_keys = ("lr_scale",)  # optional per-group multiplier of lr

    def __init__(self, params, defaults: dict):
        if isinstance(params, Module):
            raise TypeError(
                f"{type(self).__name__} takes parameters, not a model: pass "
                "model.named_parameters() (or a list of param-group dicts)"
            )
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[str, dict] = {}
        self.step_count = 0
        self._check(self.defaults)
        items = [params] if isinstance(params, Mapping) else list(params)
        if items and all(isinstance(g, Mapping) for g in items):
            for group in items:
                self.add_param_group(group)
        elif any(isinstance(g, Mapping) for g in items):
            raise TypeError("params mixes param-group dicts and parameters; "
                            "put every parameter inside a group dict")
        else:
            self.add_param_group({"params": items})
        if not any(group["params"] for group in self.param_groups):
            raise ValueError(
                f"{type(self).__name__} got no trainable parameters (empty list, "
                "or all requires_grad=False); an exhausted generator such as a "
                "reused model.named_parameters() also looks like this"
            )

    # -- groups -------------------------------------------------------------
    def add_param_group(self, group: Mapping) -> None:
        """Add ``{"params": ..., <hyperparameter overrides>}``; missing
        hyperparameters take the optimizer's defaults."""
        if "params" not in group:
            raise ValueError("a param group needs a 'params' entry")
        allowed = set(self.defaults) | set(self._extra_group_keys) | {"params"}
        unknown = sorted(set(group) - allowed)
        if unknown:
            raise ValueError(
                f"unknown param-group option(s) {unknown} for "
                f"{type(self).__name__}; valid: {sorted(allowed - {'params'})}"
            )
        start = sum(len(g["params"]) for g in self.param_groups)
        params, keys = _named(group["params"], start)
        new = {"params": params, "names": keys}
        for key, default in self.defaults.items():
            new[key] = _as_hyper(group.get(key, default), default)
        if "lr_scale" in group:
            new["lr_scale"] = float(group["lr_scale"])
        self._check(new)
        seen_ids = {id(p) for g in self.param_groups for p in g["params"]}
        seen_keys = {k for g in self.param_groups for k in g["names"]}
        for key, param in zip(keys, params):
            if id(param) in seen_ids:
                raise ValueError(f"parameter {key!r} appears in more than one "
                                 "param group (or twice in one)")
            if key in seen_keys:
                raise ValueError(f"duplicate parameter name {key!r}")
            seen_ids.add(id(param))
            seen_keys.add(key)
        self.param_groups.append(new)

    @property
    def lr(self) -> float:
        """Learning rate of the first group (see ``param_groups`` for others)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.set_lr(value)

    def set_lr(self, lr: float) -> None:
        """Set every group's lr to ``lr * group.get("lr_scale", 1.0)``."""
        for group in self.param_groups:
            group["lr"] = float(lr) * group.get("lr_scale", 1.0)

    # -- the update ---------------------------------------------------------
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            self._update_group([(p.data, p.grad, self.state.setdefault(key, {}))
                                for key, p in zip(group["names"], group["params"])
                                if p.grad is not None], group)
        self.step_count += 1

    def zero_grad(self) -> None:
        """Fill every gradient with zeros (grads accumulate until then)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_grad()

    def _check(self, group: dict) -> None:
        raise NotImplementedError

    def _update(self, p, g, state: dict, group: dict) -> None:
        raise NotImplementedError

    def _update_group(self, items, group: dict) -> None:
        """Every (p, g, state) of a group: one ``_update`` each (a subclass
        may run them together)."""
        for p, g, state in items:
            self._update(p, g, state, group)

    # -- saving and loading -------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically, as a flat dict of
        NumPy arrays/scalars (ready for ``np.savez``; host copies)::

            optimizer            class name, e.g. 'AdamW'
            step                 number of step() calls
            num_groups           number of param groups
            group.<i>.params     parameter keys of group i (str array)
            group.<i>.<hyper>    lr, weight_decay, betas, ... of group i
            state.<key>.<buf>    e.g. state.blocks.0.attn.qkv.weight.exp_avg
        """
        return flatten_state(self)

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore ``state_dict()`` output (also after ``np.savez``/``np.load``).

        Group hyperparameters (lr, ...) are restored too, as in torch. The
        parameters must be the same (same names/order, shapes); otherwise a
        ValueError lists every mismatch and nothing is changed.
        """
        restore_state(self, state_dict)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in group.items()
                              if k not in ("params", "names"))
            lines.append(f"  group {i}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines) + "\n)"
