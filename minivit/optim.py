"""Optimizers, gradient clipping and the learning-rate schedule.

Everything here follows PyTorch's definitions exactly (checked against
``torch.optim`` in ``tests/test_optim.py``), written once against the array
module ``backend.xp`` so it runs on NumPy or CuPy arrays alike.

Conventions:

* updates happen IN PLACE on ``Parameter.data`` (the model keeps pointing at
  the same arrays) with in-place ops / ``out=``, so an update allocates at
  most one or two temporaries the size of the parameter;
* optimizer state (momentum, Adam moments) has the parameter's dtype: float32
  training stays float32; hyperparameters are plain Python floats, which
  NumPy/CuPy treat as "weak" scalars that never upcast an array;
* ``params`` may be ``model.named_parameters()`` (recommended: the state is
  then saved under timm names), a list of Parameters, or a list of
  param-group dicts ``{"params": [...], "weight_decay": 0.0, "lr": ...}``.
  Parameters with ``requires_grad=False`` are skipped.

Typical use::

    groups = param_groups_weight_decay(model.named_parameters(), 0.05)
    opt = AdamW(groups, lr=1e-3)
    sched = WarmupCosine(1e-3, warmup_steps=500, total_steps=10_000)
    for step in range(10_000):
        sched.apply(opt, step)
        ...forward / backward...
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping

import numpy

from minivit import backend
from minivit.module import Module, Parameter

__all__ = [
    "Optimizer",
    "SGD",
    "AdamW",
    "param_groups_weight_decay",
    "clip_grad_norm_",
    "WarmupCosine",
]

# Names that never get weight decay, besides biases and 1-D tensors (timm's
# VisionTransformer.no_weight_decay()).
DEFAULT_NO_DECAY = ("cls_token", "pos_embed", "dist_token", "reg_token")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _host_copy(array) -> numpy.ndarray:
    """A NumPy copy that shares no memory with ``array`` (NumPy or CuPy)."""
    out = backend.to_numpy(array)
    return out.copy() if out is array else out


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


# ---------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------
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
    group's hyperparameters) and ``_update`` (one parameter's update).
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
            for key, p in zip(group["names"], group["params"]):
                if p.grad is None:
                    continue
                self._update(p.data, p.grad, self.state.setdefault(key, {}), group)
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
        out = {
            "optimizer": numpy.str_(type(self).__name__),
            "step": numpy.int64(self.step_count),
            "num_groups": numpy.int64(len(self.param_groups)),
        }
        for i, group in enumerate(self.param_groups):
            out[f"group.{i}.params"] = numpy.array(group["names"], dtype=str)
            for key in (*self.defaults, *self._extra_group_keys):
                if key in group:
                    out[f"group.{i}.{key}"] = numpy.array(group[key])[()]
        for pkey, st in self.state.items():
            for name, value in st.items():
                if name in self._counters:
                    out[f"state.{pkey}.{name}"] = numpy.int64(value)
                else:
                    out[f"state.{pkey}.{name}"] = _host_copy(value)
        return out

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore ``state_dict()`` output (also after ``np.savez``/``np.load``).

        Group hyperparameters (lr, ...) are restored too, as in torch. The
        parameters must be the same (same names/order, shapes); otherwise a
        ValueError lists every mismatch and nothing is changed.
        """
        sd = dict(state_dict)
        cls = type(self).__name__
        errors: list[str] = []

        def need(key):
            if key not in sd:
                errors.append(f"missing key {key!r}")
                return None
            return sd[key]

        kind = need("optimizer")
        if kind is not None and str(kind) != cls:
            raise ValueError(f"this state_dict is for a {kind} optimizer, not {cls}; "
                             f"create a {kind} to load it")
        step_count = need("step")
        num_groups = need("num_groups")
        if num_groups is not None and int(num_groups) != len(self.param_groups):
            errors.append(f"saved {int(num_groups)} param group(s), this optimizer "
                          f"has {len(self.param_groups)}")
        params = {}  # key -> Parameter
        hyper = []   # per group: {key: value}
        for i, group in enumerate(self.param_groups):
            params.update(zip(group["names"], group["params"]))
            saved = need(f"group.{i}.params")
            if saved is not None:
                saved = [str(k) for k in numpy.asarray(saved).reshape(-1)]
                if saved != group["names"]:
                    gone = [k for k in group["names"] if k not in saved]
                    new = [k for k in saved if k not in group["names"]]
                    detail = (f"; missing from the saved group: {gone}" if gone else "") + (
                        f"; not in this optimizer: {new}" if new else "")
                    errors.append(f"group {i} parameters differ from the saved "
                                  f"ones{detail or ' (order differs)'}")
            values = {}
            for key, default in self.defaults.items():
                value = need(f"group.{i}.{key}")
                if value is not None:
                    values[key] = _as_hyper(value, default)
            if f"group.{i}.lr_scale" in sd:
                values["lr_scale"] = float(sd[f"group.{i}.lr_scale"])
            hyper.append(values)
        # per-parameter state: state.<key>.<buffer>, key may contain dots
        new_state: dict[str, dict] = {}
        unknown, broken = [], set()
        for skey, value in sd.items():
            if not skey.startswith("state."):
                continue
            pkey, _, name = skey[len("state."):].rpartition(".")
            if pkey not in params:
                if pkey not in unknown:
                    unknown.append(pkey)
                continue
            if name not in self._state_keys:
                errors.append(f"unknown state entry {skey!r} (a {cls} keeps "
                              f"{list(self._state_keys)})")
                continue
            if name in self._counters:
                new_state.setdefault(pkey, {})[name] = int(value)
                continue
            value = backend.to_numpy(value)
            shape = tuple(params[pkey].data.shape)
            if tuple(value.shape) != shape:
                errors.append(f"{skey}: expected shape {shape}, got {tuple(value.shape)}")
                broken.add(pkey)
                continue
            new_state.setdefault(pkey, {})[name] = value
        if unknown:
            errors.append(f"state for parameter(s) not in this optimizer: {unknown}")
        for pkey, st in new_state.items():
            if pkey not in broken and set(st) != set(self._state_keys):
                errors.append(f"incomplete state for {pkey!r}: has {sorted(st)}, "
                              f"needs {sorted(self._state_keys)}")
        if errors:
            raise ValueError(
                f"{cls} state_dict does not fit this optimizer:\n  "
                + "\n  ".join(errors)
                + "\n  (build the model and the param groups the way they were "
                "when the state was saved)"
            )
        # all checks passed: apply (copies, in each parameter's dtype)
        for group, values in zip(self.param_groups, hyper):
            group.update(values)
        self.step_count = int(step_count)
        self.state = {}
        for pkey, st in new_state.items():
            dtype = params[pkey].data.dtype
            self.state[pkey] = {
                name: (value if name in self._counters else
                       backend.to_device(numpy.array(value, dtype=dtype, copy=True)))
                for name, value in st.items()
            }

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in group.items()
                              if k not in ("params", "names"))
            lines.append(f"  group {i}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines) + "\n)"


def _as_hyper(value, like):
    """Convert a hyperparameter to the Python type of its default (floats stay
    Python floats: a NumPy float64 scalar would upcast float32 math)."""
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, tuple):
        return tuple(float(v) for v in numpy.asarray(value).reshape(-1))
    return float(value)


# ---------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent, exactly ``torch.optim.SGD`` (dampening 0).

    For each parameter p with gradient g (any shape; state has p's shape)::

        d = g + weight_decay * p              # L2 decay, through the gradient
        b = d            (first step)         # momentum buffer
        b = momentum * b + d   (later steps)
        d = d + momentum * b   if nesterov else  b
        p = p - lr * d
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _check(self, group):
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr} (must be >= 0)")
        if not mu >= 0.0:
            raise ValueError(f"invalid momentum {mu} (must be >= 0)")
        if not wd >= 0.0:
            raise ValueError(f"invalid weight_decay {wd} (must be >= 0)")
        if group["nesterov"] and mu <= 0.0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _update(self, p, g, state, group):
        xp = backend.xp
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        owned = False  # does d hold a temporary we may overwrite?
        d = g
        if wd != 0.0:
            # d = g + wd * p
            d = xp.multiply(p, wd)
            d += g
            owned = True
        if mu != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # b_1 = d_1 (torch starts the buffer at the first gradient)
                buf = state["momentum_buffer"] = d.copy()
            else:
                # b_t = mu * b_{t-1} + d_t
                buf *= mu
                buf += d
            if group["nesterov"]:
                # d_t = d_t + mu * b_t   (look ahead along the velocity)
                ahead = xp.multiply(buf, mu)
                ahead += d
                d, owned = ahead, True
            else:
                d, owned = buf, False
        # p = p - lr * d
        if owned:
            d *= lr
            p -= d
        else:
            p -= xp.multiply(d, lr)


# ---------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------
class AdamW(Optimizer):
    """Adam with decoupled weight decay, exactly ``torch.optim.AdamW``.

    For each parameter p with gradient g, at step t = 1, 2, ... (m, v start
    at zero, have p's shape and dtype)::

        p = p * (1 - lr * weight_decay)       # decoupled decay, not in g
        m = beta1 * m + (1 - beta1) * g       # 1st moment
        v = beta2 * v + (1 - beta2) * g**2    # 2nd moment
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps   # eps after correction
        p = p - lr / (1 - beta1**t) * m / denom
    """

    _state_keys = ("step", "exp_avg", "exp_avg_sq")
    _counters = ("step",)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def _check(self, group):
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        betas = tuple(group["betas"])
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr} (must be >= 0)")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps} (must be >= 0)")
        if not wd >= 0.0:
            raise ValueError(f"invalid weight_decay {wd} (must be >= 0)")
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas} (two values in [0, 1))")

    def _update(self, p, g, state, group):
        xp = backend.xp
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p)
            state["exp_avg_sq"] = xp.zeros_like(p)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        # p = p * (1 - lr * wd)   decoupled: decay does not pass through m, v
        if wd != 0.0:
            p *= 1.0 - lr * wd
        tmp = xp.multiply(g, 1.0 - beta1)  # the one scratch array, reused below
        # m = beta1 * m + (1 - beta1) * g
        m *= beta1
        m += tmp
        # v = beta2 * v + (1 - beta2) * g * g
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - beta2
        v *= beta2
        v += tmp
        # bias corrections undo the zero start of m and v
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        # denom = sqrt(v) / sqrt(bc2) + eps
        xp.sqrt(v, out=tmp)
        tmp /= bias_correction2 ** 0.5
        tmp += eps
        # p = p - (lr / bc1) * m / denom
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / bias_correction1
        p -= tmp


# ---------------------------------------------------------------------------
# weight-decay groups, clipping, schedule
# ---------------------------------------------------------------------------
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


def clip_grad_norm_(params, max_norm: float, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so their global L2 norm is <= max_norm.

    total = sqrt(sum over params of sum(g**2)); if total > max_norm every
    gradient is multiplied by max_norm / (total + 1e-6) (torch's formula).

    Args:
        params: Parameters, (name, Parameter) pairs, or a Module; those
            without a gradient are ignored.
    Returns:
        The norm before clipping, as a Python float. A non-finite norm (inf or
        NaN gradients) leaves the gradients alone (skip that step), or raises
        with ``error_if_nonfinite=True``.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = [p.grad for p in _iter_params(params) if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.xp
    # per-tensor norms stay on the device; one transfer for the total
    norms = xp.stack([xp.linalg.norm(g.reshape(-1)) for g in grads])
    total = float(xp.linalg.norm(norms))
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"the total gradient norm is {total}; gradients "
                               "contain inf/NaN (lower the lr or check the loss)")
        return total
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


class WarmupCosine:
    """Linear warm-up, then cosine decay: the learning rate of step ``s``.

    With W = warmup_steps, T = total_steps and 0-based optimizer steps s::

        s <  W:      lr = base_lr * (s + 1) / W
        W <= s < T:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2
        s >= T:      lr = min_lr

    So the first step uses base_lr / W (small but not zero), step W - 1 and
    step W use base_lr, and the cosine reaches min_lr at s = T (one past the
    last step of a T-step run, whose last update is therefore not wasted at
    lr = 0).
    """

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int,
                 min_lr: float = 0.0):
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps = operator.index(warmup_steps)
        self.total_steps = operator.index(total_steps)
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                             f"got {warmup_steps}")
        if not self.base_lr >= 0.0:
            raise ValueError(f"base_lr must be >= 0, got {base_lr}")
        if not 0.0 <= self.min_lr <= self.base_lr:
            raise ValueError(f"min_lr must be in [0, base_lr={base_lr}], got {min_lr}")

    def lr_at(self, step: int) -> float:
        """The learning rate for 0-based optimizer step ``step``."""
        s = operator.index(step)
        if s < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        w, t = self.warmup_steps, self.total_steps
        if s < w:
            return self.base_lr * (s + 1) / w
        if s >= t:
            return self.min_lr
        progress = (s - w) / (t - w)  # in [0, 1)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    __call__ = lr_at

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set the optimizer's lr for ``step`` (times each group's
        ``lr_scale``, if any) and return it."""
        lr = self.lr_at(step)
        optimizer.set_lr(lr)
        return lr

    def __repr__(self) -> str:
        return (f"WarmupCosine(base_lr={self.base_lr}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps}, min_lr={self.min_lr})")
