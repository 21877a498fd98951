"""Parameter and Module: the contract every layer follows.

A layer is a :class:`Module` with two methods a learner reads side by side:

* ``forward(x)`` computes the output and keeps, in ``self.cache``, exactly
  what the backward pass will need;
* ``backward(dout)`` takes dL/d(output), returns dL/d(input) and *adds*
  dL/d(parameter) into each ``Parameter.grad`` (like PyTorch, gradients
  accumulate until :meth:`Module.zero_grad`).

Sub-modules and parameters assigned as attributes are registered in order,
which gives dotted names (``blocks.0.attn.qkv.weight``) identical to timm's.

Inference that needs no gradient runs under :class:`no_grad` (as
``torch.no_grad()``): layers then keep nothing for backward, which saves the
memory of every cached activation and the work of computing what only
backward reads (GELU's derivative, LayerNorm's separate normalised copy).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import numpy

from minivit import backend


class _GradMode(threading.local):
    """Per-thread gradient mode. The class attribute is every thread's
    default, so a read is a plain attribute read, not getattr's slow
    missing-attribute path (``is_grad_enabled`` runs for every layer's
    forward); ``minivit.backend`` and ``minivit.parallel.threads`` keep their
    per-thread state the same way."""
    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """False inside ``with no_grad():`` (in this thread), True otherwise."""
    return _grad_mode.enabled


class set_grad_enabled:
    """``with set_grad_enabled(False):`` equals ``no_grad()``; ``True``
    re-enables gradients (in this thread), as ``torch.set_grad_enabled``."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)

    def __enter__(self):
        self._previous = is_grad_enabled()
        _grad_mode.enabled = self.mode
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._previous
        return False


class no_grad(set_grad_enabled):
    """``with minivit.no_grad(): model.forward(x)``: a forward that keeps
    nothing for backward (a backward after it is an error that says so).

    Like ``torch.no_grad()``: per thread, nests, and also works as a decorator.
    ``model.eval()`` is separate: it switches dropout off, and still lets a
    backward run (e.g. saliency maps of a model in eval mode).
    """

    def __init__(self):
        super().__init__(False)

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        return wrapper


def parameters_of(modules) -> list:
    """The parameters of ``modules`` (a ``Module.modules()`` list), in order:
    ``Module.parameters`` without walking the modules again."""
    return [p for m in modules for p in m._parameters.values()]


class Parameter:
    """A trainable array and the gradient accumulated for it.

    ``requires_grad=False`` marks a fixed array (e.g. the sine-cosine position
    embedding): it is saved in ``state_dict`` but not trained; its ``grad`` is None.
    """

    def __init__(self, data, requires_grad: bool = True):
        self.data = data
        self.requires_grad = requires_grad
        self._grad = None

    @property
    def grad(self):
        """dL/d(data), as backward accumulates it: zeros of data's shape until
        then, allocated when first asked for, so a model that only infers
        holds no gradients (a pretrained model's worth of memory)."""
        if self._grad is None and self.requires_grad:
            self._grad = backend.xp.zeros_like(self.data)
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self) -> None:
        if self._grad is not None:          # none yet: zero already
            self._grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of all layers (see the module docstring for the contract)."""

    # Attributes that hold what one forward left for its backward (or for a
    # plot): a copy of the model (``minivit.parallel.replicas``) leaves them
    # behind. A layer that keeps more lists it here.
    forward_state = ("cache",)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "cache", None)

    # -- registration -------------------------------------------------------
    def __setattr__(self, key, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}.__init__ must call super().__init__() "
                "before assigning attributes"
            )
        self._parameters.pop(key, None)
        self._modules.pop(key, None)
        if isinstance(value, Parameter):
            self._parameters[key] = value
        elif isinstance(value, Module):
            self._modules[key] = value
        object.__setattr__(self, key, value)

    # -- the two passes -----------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def _saved(self):
        """The forward cache, or a clear error if backward came first."""
        if self.cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() was called before forward(), or "
                "after a forward under minivit.no_grad() (which keeps nothing for "
                "backward): run forward on a batch outside no_grad first, then "
                "backward with the gradient of the loss with respect to its output"
            )
        return self.cache

    def _keep(self, *saved):
        """Store what backward needs (``self.cache``), unless under no_grad."""
        # a plain attribute, never a Parameter or Module: no registration
        object.__setattr__(self, "cache", (saved[0] if len(saved) == 1 else saved)
                           if is_grad_enabled() else None)

    # -- traversal ----------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        """Yield ``(dotted_name, Module)``, this module first, depth first in
        registration order."""
        yield prefix, self
        for key, module in self._modules.items():
            yield from module.named_modules(f"{prefix}.{key}" if prefix else key)

    def modules(self) -> list:
        """Every module, in the order of ``named_modules``, without building
        the names (cheap enough to run every step)."""
        found, stack = [], [self]
        while stack:
            module = stack.pop()
            found.append(module)
            stack.extend(reversed(module._modules.values()))
        return found

    def named_parameters(self, prefix: str = ""):
        """Yield ``(dotted_name, Parameter)`` in registration order."""
        for module_name, module in self.named_modules(prefix):
            for key, param in module._parameters.items():
                yield (f"{module_name}.{key}" if module_name else key), param

    def parameters(self) -> list:
        """Every ``Parameter``, in the order of ``named_parameters``."""
        return parameters_of(self.modules())

    def num_parameters(self, trainable_only: bool = True) -> int:
        return int(sum(p.data.size for p in self.parameters()
                       if p.requires_grad or not trainable_only))

    def zero_grad(self) -> None:
        """Reset every accumulated gradient to zero (explicitly, as in llm.c)."""
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # -- saving and loading -------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, numpy.ndarray]":
        """Every parameter as a host NumPy array, under timm's names."""
        return OrderedDict(
            (key, backend.to_numpy(p.data).copy()) for key, p in self.named_parameters()
        )

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Copy arrays (NumPy, CuPy, or anything ``numpy.asarray`` takes) in.

        With ``strict`` (the default) any missing, unexpected or wrongly shaped
        key is an error that lists all of them; nothing is changed then.
        """
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = [
            f"{k}: expected {tuple(own[k].shape)}, got {_shape_of(v)}"
            for k, v in state_dict.items()
            if k in own and _shape_of(v) != tuple(own[k].shape)
        ]
        if wrong or (strict and (missing or unexpected)):
            lines = ["state_dict does not fit this model:"]
            if missing:
                lines.append("  missing keys: " + ", ".join(missing))
            if unexpected:
                lines.append("  unexpected keys: " + ", ".join(unexpected))
            if wrong:
                lines.append("  wrongly shaped: " + "; ".join(wrong))
            lines.append("  (build the model with the config the weights were saved "
                         "with, or pass strict=False to skip missing/unexpected keys)")
            raise ValueError("\n".join(lines))
        for key, value in state_dict.items():
            if key in own:
                param = own[key]
                param.data[...] = backend.to_device(backend.to_numpy(value),
                                                    param.data.dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for key, module in self._modules.items():
            sub = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({key}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _shape_of(value) -> tuple:
    """The shape of a NumPy or CuPy array (read, not converted: NumPy's
    ``numpy.shape`` is not for device arrays), or of anything else
    ``numpy.asarray`` takes."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else tuple(numpy.shape(value))


class ModuleList(Module):
    """An indexable list of modules, named ``0``, ``1``, ... like PyTorch's."""

    def __init__(self, modules=()):
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        return list(self._modules.values())[i]
