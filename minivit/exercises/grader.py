"""The grader: a learner's backward against finite differences, in plain words.

For every case of the exercise (float64, several shapes, random mixed-sign
upstream gradient) it runs the learner's forward and backward, refuses bad
output (None, a wrong shape or dtype, NaN, inputs changed in place) with a
message, and checks every gradient with :func:`minivit.gradcheck.check_gradients`
(one call per tensor, so each report names its own worst element). For a
wrong gradient it says by how much and on which elements (compared with the
library's own backward), and which typical mistake it is, when one of the
exercise's :class:`~minivit.exercises.base.Mistake` backwards gives exactly the
learner's numbers there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from minivit import backend
from minivit.exercises import base
from minivit.exercises.loader import ExerciseError, LearnerRaised, guarded, load_file
from minivit.gradcheck import DEFAULT_TOL, check_gradients

MAX_HINT = 3


@dataclass
class CheckResult:
    """What ``check`` found. ``text`` is what the learner reads."""

    exercise: str
    passed: bool
    text: str
    problem: str | None = None          # None when passed; "gradient", "shape", "stub", ...
    wrong: list = field(default_factory=list)       # gradient names, e.g. ["dx"]
    mistakes: list = field(default_factory=list)    # keys of the recognised mistakes
    hints: list = field(default_factory=list)       # the hint texts shown

    def __str__(self):
        return self.text


def _fmt_index(index) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _validate(ex, case, name, value, expected):
    """A message if ``value`` cannot be a gradient of shape ``expected``."""
    g = ex.grad_name(name)
    if value is None:
        return (f"{g} is None: your backward must return dx (`return dx` at its end)"
                if name == next(iter(case.inputs)) else
                f"{g} is None: nothing was added for it", "none")
    if isinstance(value, tuple) and name == next(iter(case.inputs)):
        return f"your backward returned a tuple of {len(value)}: return {g} alone", "type"
    if not isinstance(value, numpy.ndarray):
        if numpy.isscalar(value) and expected == ():
            return None
        return (f"{g} is a {type(value).__name__}, not a NumPy array of shape {expected}",
                "type")
    if tuple(value.shape) != tuple(expected):
        extra = " (transposed?)" if tuple(value.shape) == tuple(expected)[::-1] else ""
        return (f"{g} has shape {tuple(value.shape)}{extra}; it must have the shape of "
                f"{name}, {tuple(expected)}", "shape")
    if value.dtype != numpy.float64:
        return (f"{g} has dtype {value.dtype}; the check runs in float64 and the gradient "
                "must stay float64 (no astype, no float32 or integer arrays)", "dtype")
    if not numpy.isfinite(value).all():
        bad = int((~numpy.isfinite(value)).sum())
        return f"{g} has {bad} non-finite element(s) (NaN or inf)", "nonfinite"
    return None


def _changed(before: dict, after: dict) -> list:
    return [n for n, b in before.items()
            if not numpy.array_equal(numpy.asarray(after[n]), b)]


def _grads_of(ex, case, dx, grads):
    """The learner's gradients as raw objects, before the prefill comes off."""
    (first,) = case.inputs
    raw = {first: dx}
    if ex.kind == "params":
        for n in case.params:
            raw[n] = grads.get(n) if isinstance(grads, dict) else None
    elif ex.kind == "modules":
        raw.update((n, p.grad) for n, p in case.module.named_parameters() if p.requires_grad)
    return raw


def _run_subject(ex, subject, case):
    """Learner forward + backward with every check on the way. Returns
    (gradients by tensor name, None) or (None, (message, problem))."""
    tensors = case.tensors()
    before = {n: t.copy() for n, t in tensors.items()}
    reference_y, _ = base.call_forward(ex, ex.starter_module.forward, case)
    try:
        y, cache = _pair(guarded(base.call_forward, ex, subject.forward, case, what="forward"))
    except LearnerRaised as exc:
        return None, (str(exc), "raised")
    except ExerciseError as exc:
        return None, (str(exc), exc.problem)
    moved = _changed(before, tensors)
    if moved:
        return None, (f"your forward changed its input {', '.join(moved)} in place: "
                      "copy before you modify (x = x.copy())", "inplace")
    if numpy.shape(y) != numpy.shape(reference_y) or not numpy.allclose(
            y, reference_y, rtol=1e-9, atol=1e-12):
        return None, ("your forward no longer computes the layer: its output differs from "
                      "the starter's forward. Keep forward as given (you may add to the "
                      "cache); `python -m minivit.exercises start NAME --dir OTHER_FOLDER` writes a "
                      "fresh copy", "forward")
    grads = base.prepare_grads(ex, case)
    dy = case.dy.copy() if isinstance(case.dy, numpy.ndarray) else case.dy
    dy_before = case.dy
    try:
        if ex.kind == "params":
            dx = guarded(subject.backward, dy, cache, grads, what="backward")
        else:
            dx = guarded(subject.backward, dy, cache, what="backward")
    except LearnerRaised as exc:
        if isinstance(exc.original, NotImplementedError):
            return None, ("your backward is still the stub (it raises NotImplementedError): "
                          "fill in the table in its docstring, then write the code", "stub")
        message = str(exc)
        if isinstance(exc.original, (ValueError, IndexError)):
            message += ("\nShapes do not fit on that line: print the .shape of each array "
                        "there; the table in the docstring gives the shape of every gradient.")
        return None, (message, "raised")
    raw = _grads_of(ex, case, dx, grads)
    for n, value in raw.items():
        problem = _validate(ex, case, n, value, numpy.shape(tensors[n]))
        if problem:
            return None, problem
    moved = _changed(before, tensors)
    if isinstance(dy, numpy.ndarray) and not numpy.array_equal(dy, dy_before):
        moved.insert(0, "dy")
    if moved:
        return None, (f"your backward changed {', '.join(moved)} in place: dy and the "
                      "inputs may be used again elsewhere (a residual, the optimizer); "
                      "write into new arrays (e.g. d = dy * ..., not dy *= ...)", "inplace")
    return base.collect(ex, case, dx, grads), None


def _pair(result):
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ExerciseError("your forward must return two things, (y, cache), as the "
                            "starter's does", "forward")
    return result


def _reference(ex, case, subject):
    """Gradients of ``subject`` (the library's or a mistake's) on the case, or None."""
    try:
        _, grads = base.run(ex, subject.forward, subject.backward, case)
        return {n: numpy.array(g, dtype=numpy.float64) for n, g in grads.items()}
    except Exception:                       # noqa: BLE001 - a mistake that cannot run here
        return None


def _recognise(ex, case, learner, truth, wrong):
    """Mistakes that give the learner's numbers on each wrong tensor."""
    found = []
    for mistake in ex.mistakes:
        theirs = _reference(ex, case, base.Fns(ex.starter_module.forward, mistake.backward))
        if theirs is None:
            continue
        explains = [n for n in wrong
                    if (base.rel_error(theirs[n], truth[n]) > DEFAULT_TOL).any()
                    and (base.rel_error(learner[n], theirs[n]) <= 1e-6).all()]
        if explains:
            found.append((mistake, explains))
    covered = set()
    chosen = []
    for mistake, explains in found:             # in the order of the exercise's list
        if not set(explains) <= covered:
            chosen.append(mistake)
            covered |= set(explains)
    return chosen, [n for n in wrong if n not in covered]


def _hint_lines(levels, level):
    return [f"  Hint {i + 1}: {text}" for i, text in enumerate(levels[:level])]


def grade(ex, subject, hint: int = 1) -> CheckResult:
    """Check ``subject`` (with ``forward`` and ``backward``) on every case of ``ex``."""
    hint = max(0, min(int(hint), MAX_HINT))
    cases = ex.make_cases()
    lines = []
    with backend.using("numpy", dtype="float64"), numpy.errstate(all="ignore"):
        for number, case in enumerate(cases, 1):
            head = f"case {number} of {len(cases)}: {case.label}"
            learner, problem = _run_subject(ex, subject, case)
            if problem:
                message, kind = problem
                shown = "  " + message.replace("\n", "\n  ")
                return CheckResult(ex.name, False, "\n".join(lines + [head, shown]), kind)
            truth = _reference(ex, case, ex.reference)
            loss = base.loss_function(ex, case)
            tensors = case.tensors()
            reports = {n: check_gradients(loss, {n: tensors[n]}, {n: learner[n]},
                                          samples=case.samples, seed=number)
                       for n in tensors}
            wrong = [n for n, r in reports.items() if not r.ok]
            if not wrong:
                lines.append(f"{head}: all {len(reports)} gradients agree with finite "
                             f"differences (worst relative error "
                             f"{max(r.max_rel_error for r in reports.values()):.1e})")
                continue
            return _failure(ex, case, head, lines, reports, learner, truth, wrong, hint)
    names = ", ".join(ex.grad_name(n) for n in tensors)
    lines.append(f"PASSED: {ex.title}: every gradient ({names}) matches finite differences "
                 f"(float64, relative error <= {DEFAULT_TOL:.0e}) in all {len(cases)} cases.")
    return CheckResult(ex.name, True, "\n".join(lines))


def _failure(ex, case, head, lines, reports, learner, truth, wrong, hint):
    out = lines + [head]
    many = len(reports) > 6                     # a model: name the right ones in one line
    if many:
        right = [ex.grad_name(n) for n, r in reports.items() if r.ok]
        out.append(f"  {len(wrong)} of {len(reports)} gradients are WRONG"
                   + (f"; right: {', '.join(right)}" if right else "") + ".")
    for n, r in reports.items():
        g = ex.grad_name(n)
        if r.ok:
            if not many:
                out.append(f"  {g}: ok (worst relative error {r.max_rel_error:.1e})")
            continue
        if many and wrong.index(n) >= 4:
            if wrong.index(n) == 4:
                rest = [ex.grad_name(m) for m in wrong[4:]]
                out.append(f"  also wrong: {', '.join(rest)}.")
            continue
        where = f"{g}{_fmt_index(r.index)}" if r.index else g
        text = (f"  {g}: WRONG. Worst at {where}: yours {r.analytic:.6g}, finite differences "
                f"{r.numeric:.6g} (relative error {r.max_rel_error:.1e})")
        if truth is not None:
            bad = base.rel_error(learner[n], truth[n]) > DEFAULT_TOL
            count = int(bad.sum())
            said = ex.describe(n, bad, case) if ex.describe else None
            if count == bad.size:
                text += f"; every one of its {bad.size} elements is wrong"
            elif count:
                first = [_fmt_index(i) for i in numpy.argwhere(bad)[:4]]
                text += (f"; {count} of its {bad.size} elements are wrong, e.g. at "
                         f"{', '.join(first)}")
            if said:
                text += f", {said}"
            if not numpy.any(learner[n]) and numpy.any(truth[n]):
                text += " (all zero: nothing was added to it)"
        out.append(text + ".")
    mistakes, unexplained = _recognise(ex, case, learner, truth, wrong) \
        if truth is not None else ([], wrong)
    shown = []
    for m in mistakes:
        out.append(f"This looks like a typical mistake: {m.title}.")
        if hint:
            out += _hint_lines(m.hints, hint)
            shown += list(m.hints[:hint])
    first_input = next(iter(case.inputs))
    for n in unexplained:
        levels = ex.tensor_hints.get(n) or _module_param_hints(ex, n, first_input)
        if hint:
            out.append(f"About {ex.grad_name(n)}:")
            out += _hint_lines(levels, hint)
            shown += list(levels[:hint])
    if hint < MAX_HINT:
        out.append(f"(More help: --hint {hint + 1}; the library's own code: "
                   f"python -m minivit.exercises solution {ex.name}.)")
    else:
        out.append(f"(The library's own code: python -m minivit.exercises solution {ex.name}; "
                   f"the derivation: docs/{ex.page}.)")
    return CheckResult(ex.name, False, "\n".join(out), "gradient",
                       wrong=[ex.grad_name(n) for n in wrong],
                       mistakes=[m.key for m in mistakes], hints=shown)


def _module_param_hints(ex, name, first_input):
    layer = name.rsplit(".", 1)[0]
    return (f"{ex.grad_name(name)} is accumulated by the layer {layer} itself, in its "
            "backward: if it is wrong, that layer's backward got the wrong gradient (or was "
            "not called, or was called twice).",
            "Check the gradient you pass to each layer's backward: it must be the gradient "
            "of that layer's output, which means going through the forward lines in "
            "reverse order.",
            *ex.tensor_hints[first_input][2:])


def check_file(ex, path, hint: int = 1) -> CheckResult:
    """Load the learner's file and grade it; a bad file is a failed result."""
    try:
        subject = load_file(path, name=ex.name)
    except ExerciseError as exc:
        return CheckResult(ex.name, False, str(exc), exc.problem)
    return grade(ex, subject, hint)
