"""What an exercise is: its cases, how its functions are called, its mistakes.

An exercise's functions follow one of three calling conventions (``kind``):

* ``"params"``: ``forward(*inputs, *params, *consts) -> (y, cache)`` and
  ``backward(dy, cache, grads) -> dx``, the parameter gradients added into
  the dict ``grads`` (Linear, LayerNorm, attention, PatchEmbed);
* ``"plain"``: ``forward(*inputs, *consts) -> (y, cache)`` and
  ``backward(dy, cache) -> dx`` (GELU, softmax, cross-entropy: there y and dy
  may be plain numbers);
* ``"modules"``: ``forward(x, module) -> (y, cache)``, ``backward(dy, cache)
  -> dx``, the parameters those of minivit modules, their gradients
  accumulated in each ``Parameter.grad`` (the block, the ViT).

:func:`run` calls a pair of functions so and returns ``y`` and every
gradient, named like the tensors (``"x"``, ``"W"``, ``"norm1.weight"``), with
what ``grads`` held before the call (``Case.prefill``, random: it catches an
overwrite) taken off again.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy


@dataclass
class Case:
    """One graded call: shapes, values and the upstream gradient."""

    label: str                          # "x (2, 3, 5), gamma (5,)": shown to the learner
    inputs: dict                        # name -> float64 array (the differentiated inputs)
    params: dict = field(default_factory=dict)    # name -> float64 array ("params" kind)
    consts: tuple = ()                  # further forward arguments (eps, heads, labels, ...)
    dy: object = None                   # dL/dy: random mixed-sign array, or a number
    prefill: dict = field(default_factory=dict)   # name -> what grads holds before backward
    module: object = None               # "modules" kind: the minivit module passed in
    samples: int | None = None          # elements checked per tensor (None: all)

    def tensors(self) -> dict:
        """Every array the finite differences perturb, by name (perturbed in place)."""
        found = {**self.inputs, **self.params}
        if self.module is not None:
            found.update((n, p.data) for n, p in self.module.named_parameters()
                         if p.requires_grad)
        return found


@dataclass
class Mistake:
    """A typical wrong backward and the hints for it.

    ``backward`` is the wrong backward itself (same calling convention as the
    learner's), run on the case: a learner's gradients that equal its
    gradients on exactly the tensors it gets wrong are this mistake.
    ``hints`` are the levels: what is wrong, where to look, the fix.
    """

    key: str
    title: str
    backward: object
    hints: tuple


@dataclass
class Exercise:
    name: str
    title: str
    kind: str                           # "params", "plain" or "modules"
    page: str                           # the docs page that derives it
    make_cases: object                  # () -> list[Case], deterministic
    reference: object                   # module-like: forward/backward, the library's code
    correct: object                     # the plain NumPy backward, written out
    mistakes: list                      # [Mistake]
    tensor_hints: dict                  # tensor name -> (level 1, 2, 3) when no mistake fits
    solution: tuple                     # "module:qualname" of the library code to show
    checks: str                         # one line: what the checker tests
    aliases: tuple = ()
    swap: str | None = None             # what use_exercise replaces in a model, if anything
    describe: object = None             # (name, wrong_mask, case) -> words, or None

    @property
    def starter_module(self):
        return importlib.import_module(f"minivit.exercises.starters.{self.name}")

    @property
    def starter_path(self) -> str:
        return self.starter_module.__file__

    def grad_name(self, tensor: str) -> str:
        """``"gamma"`` -> ``"dgamma"``, ``"norm1.weight"`` -> ``"d norm1.weight"``."""
        return f"d{tensor}" if "." not in tensor else f"d {tensor}"


class Fns:
    """A forward/backward pair (e.g. a starter's forward with a mistake's backward)."""

    def __init__(self, forward, backward):
        self.forward, self.backward = forward, backward


def call_forward(ex: Exercise, forward, case: Case):
    """y, cache of ``forward`` on the case (inputs as they are now)."""
    if ex.kind == "modules":
        return forward(*case.inputs.values(), case.module)
    return forward(*case.inputs.values(), *case.params.values(), *case.consts)


def prepare_grads(ex: Exercise, case: Case):
    """What backward accumulates into, set to the case's prefill."""
    if ex.kind == "params":
        return {n: case.prefill[n].copy() for n in case.params}
    if ex.kind == "modules":
        for n, p in case.module.named_parameters():
            if p.requires_grad:
                p.grad = case.prefill[n].copy()
    return None


def call_backward(ex: Exercise, backward, case: Case, cache, grads):
    dy = case.dy.copy() if isinstance(case.dy, numpy.ndarray) else case.dy
    if ex.kind == "params":
        return backward(dy, cache, grads)
    return backward(dy, cache)


def collect(ex: Exercise, case: Case, dx, grads) -> dict:
    """Every gradient by tensor name, the prefill taken off (raw: not validated)."""
    (first,) = case.inputs
    out = {first: dx}
    if ex.kind == "params":
        out.update(grads)
    elif ex.kind == "modules":
        out.update((n, p.grad) for n, p in case.module.named_parameters() if p.requires_grad)
    for n, before in case.prefill.items():
        got = out.get(n)
        if isinstance(got, numpy.ndarray) and got.shape == before.shape:
            out[n] = got - before
    return out


def run(ex: Exercise, forward, backward, case: Case) -> tuple:
    """(y, gradients by name) of a forward/backward pair on the case; no checks."""
    y, cache = call_forward(ex, forward, case)
    grads = prepare_grads(ex, case)
    dx = call_backward(ex, backward, case, cache, grads)
    return y, collect(ex, case, dx, grads)


def loss_function(ex: Exercise, case: Case):
    """L() = sum(y * dy) of the starter's forward, read from the current tensors."""
    forward = ex.starter_module.forward

    def loss():
        y, _ = call_forward(ex, forward, case)
        return float(numpy.sum(numpy.asarray(y) * case.dy))

    return loss


def rel_error(a, b):
    """Elementwise ``|a - b| / max(|a|, |b|, floor)``, ``floor = 1e-3 * max|b|`` (as
    :mod:`minivit.gradcheck` measures), to say which elements disagree."""
    a, b = numpy.asarray(a, dtype=numpy.float64), numpy.asarray(b, dtype=numpy.float64)
    floor = 1e-3 * float(numpy.abs(b).max()) if b.size else 0.0
    return numpy.abs(a - b) / numpy.maximum(numpy.maximum(numpy.abs(a), numpy.abs(b)),
                                            max(floor, 1e-300))
