"""Gradient checking: compare a hand-written backward with finite differences.

The idea, for a learner: if L(theta) is a scalar, then for a small step h

    dL/dtheta_i  ~=  (L(theta + h e_i) - L(theta - h e_i)) / (2 h)      (central difference)

with an error of order h^2. Comparing that number with what ``backward``
returns checks the derivation, element by element.

To turn a layer y = f(x; params) into a scalar we contract its output with a
fixed *random, mixed-sign* upstream gradient g: L = sum(y * g), so that
dL/dy = g. (An all-ones g would hide bugs: e.g. LayerNorm's outputs sum to a
constant, so a wrong dx can still pass with g = 1.)

Two modes:

* ``"elementwise"``: every element (or a random sample of ``samples``
  elements per tensor) is perturbed in turn; the report names the worst
  tensor and index. Cost: two forward passes per element.
* ``"direction"``: one random unit direction u over all inputs and
  parameters at once (as Chainer's ``check_backward``), comparing the
  directional derivative (L(theta + h u) - L(theta - h u)) / 2h with
  sum_i <grad_i, u_i>. Cost: two forward passes in all, so it scales to big
  tensors; each call checks a different random combination.

The two-point difference above has an error of order h^2 * f'''. Where the
function curves sharply (LayerNorm on a row of tiny variance, as a freshly
initialised CLS token gives) that can exceed 1e-6; ``order=4`` then uses

    dL/dtheta_i  ~=  (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / (12 h)        (error ~ h^4)

at twice the cost.

Everything must be float64: in float32 the finite differences themselves are
only good to ~1e-3. Build the module inside ``backend.using(dtype="float64")``.

Relative error of one element: |a - n| / max(|a|, |n|, floor), where the
floor is 1e-3 times the largest analytic gradient of that tensor, so that
elements whose true gradient is (near) zero are measured on the tensor's scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from minivit import backend

DEFAULT_EPS = {2: 1e-5, 4: 1e-4}      # step h for each order of the difference
DEFAULT_TOL = 1e-6


def central_difference(loss_at, eps: float, order: int = 2) -> float:
    """dL/dt at t = 0 from ``loss_at(t)``, the loss with the perturbation t applied."""
    if order == 2:
        return (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    if order == 4:
        return (8 * (loss_at(eps) - loss_at(-eps))
                - (loss_at(2 * eps) - loss_at(-2 * eps))) / (12 * eps)
    raise ValueError(f"order must be 2 or 4, got {order!r}")


@dataclass
class GradcheckReport:
    """Outcome of a check. ``max_rel_error`` is the worst relative error seen;
    ``name`` and ``index`` say where; ``analytic``/``numeric`` are its values."""

    mode: str
    max_rel_error: float
    name: str
    index: tuple
    analytic: float
    numeric: float
    tol: float
    per_tensor: dict = field(default_factory=dict)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.max_rel_error <= self.tol)

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        where = f"{self.name}{list(self.index)}" if self.index else self.name
        return (f"gradcheck {verdict} ({self.mode}, {self.checked} checks): worst relative "
                f"error {self.max_rel_error:.3e} at {where}: analytic {self.analytic:.10e}, "
                f"numeric {self.numeric:.10e} (tolerance {self.tol:.0e})")


def check_gradients(loss_fn, tensors: dict, analytic: dict, mode: str = "elementwise",
                    samples: int | None = None, eps: float | None = None,
                    tol: float = DEFAULT_TOL, seed: int = 0,
                    order: int = 2) -> GradcheckReport:
    """Check ``analytic[name] == dL/dtensors[name]`` for every name.

    Args:
        loss_fn: callable with no arguments returning the scalar L (a float),
            computed from the *current* contents of ``tensors``.
        tensors: name -> float64 array; perturbed in place and restored.
        analytic: name -> the gradient your backward computed (same shapes).
        mode: "elementwise" or "direction".
        samples: elementwise mode only: check this many random elements per
            tensor instead of all of them.
        eps: the step h (default 1e-5 for order 2, 1e-4 for order 4).
        order: 2 (two-point central difference) or 4 (four-point, see above).
    """
    if mode not in ("elementwise", "direction"):
        raise ValueError(f"mode must be 'elementwise' or 'direction', got {mode!r}")
    for name, t in tensors.items():
        if t.dtype != numpy.float64:
            raise TypeError(
                f"gradcheck needs float64 tensors, {name!r} is {t.dtype}; build the model "
                "and inputs inside `with backend.using(dtype='float64'):`"
            )
        if tuple(analytic[name].shape) != tuple(t.shape):
            raise ValueError(f"analytic gradient for {name!r} has shape "
                             f"{tuple(analytic[name].shape)}, tensor has {tuple(t.shape)}")
    if order not in DEFAULT_EPS:
        raise ValueError(f"order must be 2 or 4, got {order!r}")
    eps = DEFAULT_EPS[order] if eps is None else eps
    rng = numpy.random.default_rng(seed)
    if mode == "direction":
        return _check_direction(loss_fn, tensors, analytic, eps, order, tol, rng)
    return _check_elementwise(loss_fn, tensors, analytic, samples, eps, order, tol, rng)


def _check_elementwise(loss_fn, tensors, analytic, samples, eps, order, tol, rng):
    worst = GradcheckReport("elementwise", 0.0, "", (), 0.0, 0.0, tol)
    for name, t in tensors.items():
        grad = backend.to_numpy(analytic[name]).astype(numpy.float64)
        floor = 1e-3 * float(numpy.abs(grad).max()) if grad.size else 0.0
        if samples is None or samples >= t.size:
            flat_indices = numpy.arange(t.size)
        else:
            flat_indices = rng.choice(t.size, size=samples, replace=False)
        tensor_worst = 0.0
        for flat in flat_indices:
            index = numpy.unravel_index(int(flat), t.shape)
            original = float(t[index])

            def loss_at(delta):
                t[index] = original + delta
                return loss_fn()

            numeric = central_difference(loss_at, eps, order)
            t[index] = original
            a = float(grad[index])
            denom = max(abs(a), abs(numeric), floor, 1e-300)
            err = abs(a - numeric) / denom
            worst.checked += 1
            tensor_worst = max(tensor_worst, err)
            if err > worst.max_rel_error or not worst.name:
                worst.max_rel_error, worst.name = err, name
                worst.index = tuple(int(i) for i in index)
                worst.analytic, worst.numeric = a, numeric
        worst.per_tensor[name] = tensor_worst
    return worst


def _check_direction(loss_fn, tensors, analytic, eps, order, tol, rng):
    xp = backend.xp
    directions = {n: rng.standard_normal(t.shape) for n, t in tensors.items()}
    norm = numpy.sqrt(sum(float((d * d).sum()) for d in directions.values()))
    directions = {n: backend.to_device(d / norm, numpy.float64) for n, d in directions.items()}
    originals = {n: t.copy() for n, t in tensors.items()}

    def loss_at(delta):
        for n, t in tensors.items():
            t[...] = originals[n] + delta * directions[n]
        return loss_fn()

    numeric = central_difference(loss_at, eps, order)
    for n, t in tensors.items():
        t[...] = originals[n]
    per_tensor = {n: float(xp.sum(xp.asarray(analytic[n], dtype=numpy.float64) * directions[n]))
                  for n in tensors}
    a = sum(per_tensor.values())
    err = abs(a - numeric) / max(abs(a), abs(numeric), 1e-300)
    return GradcheckReport("direction", err, "all tensors along a random direction", (), a,
                           numeric, tol, per_tensor=per_tensor, checked=1)


def check_module(module, x, dout=None, mode: str = "elementwise", samples: int | None = None,
                 eps: float | None = None, tol: float = DEFAULT_TOL, seed: int = 0,
                 check_input: bool = True, order: int = 2) -> GradcheckReport:
    """Check ``module.backward`` for its input and every trainable parameter.

    L = sum(module.forward(x) * dout) with ``dout`` random normal (mixed signs)
    unless given. The backend is reseeded before every forward so that dropout
    draws the same mask each time (the generators are restored afterwards).
    Parameter names in the report are ``module.named_parameters()`` names;
    the input is called ``"input"``.
    """
    xp = backend.xp
    saved_rngs = (backend._host_rng, backend._device_rng)
    try:
        def run_forward():
            backend.seed(seed)
            return module.forward(x)

        y = run_forward()
        if dout is None:
            draws = numpy.random.default_rng(seed + 1).standard_normal(y.shape)
            dout = backend.to_device(draws, y.dtype)
        elif float(xp.ptp(dout)) == 0.0:
            raise ValueError("dout must vary (random, mixed-sign); a constant upstream "
                             "gradient such as all ones hides bugs")
        module.zero_grad()
        dx = module.backward(dout)

        tensors, analytic = {}, {}
        if check_input:
            tensors["input"], analytic["input"] = x, dx
        for name, p in module.named_parameters():
            if p.requires_grad:
                tensors[name], analytic[name] = p.data, p.grad.copy()

        def loss_fn():
            return float((run_forward() * dout).sum())

        return check_gradients(loss_fn, tensors, analytic, mode=mode, samples=samples,
                               eps=eps, tol=tol, seed=seed, order=order)
    finally:
        backend._host_rng, backend._device_rng = saved_rngs


def assert_gradients_ok(report: GradcheckReport) -> None:
    """Raise AssertionError with the full report when the check failed."""
    if not report.ok:
        raise AssertionError(str(report) + f"\nper tensor: {report.per_tensor}")
