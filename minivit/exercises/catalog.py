"""The exercises in order, and what the command line does with them: list, start, check, solution."""


from __future__ import annotations

import difflib
import importlib
import inspect

from minivit.exercises import progress
from minivit.exercises.grader import CheckResult, check_file, grade
from minivit.exercises.loader import ExerciseError, load_file
from minivit.exercises.specs_layers import GELU, LAYERNORM, LINEAR, SOFTMAX
from minivit.exercises.specs_attention import ATTENTION, CROSS_ENTROPY, PATCH_EMBED
from minivit.exercises.specs_model import BLOCK, VIT

# The exercises, in the order to do them.
EXERCISES = (LINEAR, LAYERNORM, GELU, SOFTMAX, ATTENTION, PATCH_EMBED, CROSS_ENTROPY,
             BLOCK, VIT)


def get(name):
    """The exercise called ``name`` (or one of its aliases, any case, - or _)."""
    if not isinstance(name, str):
        return name
    key = name.strip().lower().replace("-", "_")
    for ex in EXERCISES:
        if key == ex.name or key in (a.replace("-", "_") for a in ex.aliases):
            return ex
    names = [ex.name for ex in EXERCISES]
    close = difflib.get_close_matches(key, names, n=1)
    raise ExerciseError(f"unknown exercise {name!r}"
                        + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" The exercises: {', '.join(names)}", "unknown")


def check(name, path=None, hint: int = 1, folder=None, record: bool = True) -> CheckResult:
    """Grade the learner's file (default: ``<folder>/<name>.py``); the verdict is
    remembered in the folder's progress.json unless ``record`` is False."""
    ex = get(name)
    path = path or progress.file_of(ex, folder)
    result = check_file(ex, path, hint)
    if record and result.problem not in ("missing", "unreadable"):
        progress.record(ex, path, result, folder)
    return result


def start(name, folder=None, force: bool = False, ask=None) -> str:
    """Write the starter file into the learner's folder; returns its path."""
    return progress.start(get(name), folder, force, ask)


def status(name, folder=None) -> str:
    """This learner's status for the exercise: "not started", "passed", "failed
    (dx)", "edited since it passed", ... (see :func:`minivit.exercises.progress.status`)."""
    return progress.status(get(name), folder)


def _resolve(spec):
    module_name, _, qualname = spec.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _helpers(fn, seen):
    """minivit functions the code calls by name (kernels, wherever they live)."""
    code = getattr(fn, "__code__", None)
    glob = getattr(fn, "__globals__", {})
    found = []
    for n in (code.co_names if code else ()):
        obj = glob.get(n)
        module = getattr(obj, "__module__", "") or ""
        if inspect.isfunction(obj) and obj not in seen and (
                module.startswith("minivit.layers") or module.startswith("minivit.kernels")
                or module.startswith("minivit.loss")):
            found.append(obj)
    return found


def solution(name) -> str:
    """The library's own code for the exercise (its forward and backward and
    the kernels they call), read from the installed source with ``inspect``."""
    ex = get(name)
    parts, seen = [], []
    for spec in ex.solution:
        try:
            fn = _resolve(spec)
        except (ImportError, AttributeError):
            continue                                 # moved: show what is still there
        for f in [fn, *_helpers(fn, seen)]:
            if f in seen:
                continue
            seen.append(f)
            try:
                source = inspect.getsource(f)
                where = f"{inspect.getsourcefile(f)}, line {inspect.getsourcelines(f)[1]}"
            except (OSError, TypeError):
                continue
            parts.append(f"# --- {f.__module__}.{f.__qualname__}  ({where})\n{source}")
    doc = inspect.getmodule(_resolve(ex.solution[0]) if parts else None)
    header = f"# The library's code for the {ex.title} exercise."
    if doc is not None and doc.__doc__:
        header += "\n#\n" + "\n".join(f"# {line}".rstrip() for line in doc.__doc__.splitlines())
    return header + "\n\n" + "\n".join(parts)


def listing(folder=None) -> str:
    """The exercises in order, each with this learner's status."""
    data = progress.read(folder)
    lines = [f"Exercises (your folder: {progress.folder_of(folder)})", ""]
    for i, ex in enumerate(EXERCISES, 1):
        lines.append(f"  {i}. {ex.name:<14} {ex.title:<22} {progress.status(ex, folder, data)}")
    lines += ["", "Start one:  python -m minivit.exercises start linear",
              "Check it:   python -m minivit.exercises check linear   (--hint 2 for more help)"]
    return "\n".join(lines)


__all__ = ["EXERCISES", "CheckResult", "ExerciseError", "check", "check_file", "get", "grade",
           "listing", "load_file", "solution", "start", "status"]
