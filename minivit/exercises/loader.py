"""Loading a learner's file and calling into it, with errors in the learner's
words: what went wrong, in which of *their* lines, never the grader's own
traceback."""

from __future__ import annotations

import os
import traceback
import types

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class ExerciseError(Exception):
    """A problem for the learner to fix (the message says what and how)."""

    def __init__(self, message: str, problem: str = "error"):
        super().__init__(message)
        self.problem = problem


class LearnerRaised(Exception):
    """The learner's code raised; ``message`` shows their frames only."""

    def __init__(self, message: str, original: BaseException):
        super().__init__(message)
        self.original = original


def _outside_grader(frame) -> bool:
    name = os.path.abspath(frame.filename)
    return not name.startswith(PACKAGE_DIR + os.sep) or os.sep + "starters" + os.sep in name


def describe_exception(exc: BaseException) -> str:
    """The learner's part of a traceback (their file, the library code they
    called), then the exception: 'File "x.py", line 12, in backward'."""
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and not _outside_grader(frames[0]):        # the grader's calling frames
        frames = frames[1:]
    lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}'
             for f in frames if _outside_grader(f)]
    last = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "\n".join(lines + [last])


def guarded(fn, *args, what: str):
    """``fn(*args)``; an exception becomes LearnerRaised naming ``what``."""
    try:
        return fn(*args)
    except (Exception, SystemExit) as exc:      # noqa: BLE001 - everything the learner's code does
        raise LearnerRaised(f"your {what} raised an error:\n{describe_exception(exc)}",
                            exc) from None


def load_file(path, needed=("forward", "backward"), name: str = "exercise"):
    """The learner's file as a module; ExerciseError with a clear message if it
    is missing, does not compile, fails on import or lacks a function."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExerciseError(f"no file {path}: write the starter file first with "
                            f"`python -m minivit.exercises start {name}`, or give the "
                            "path of your file", "missing")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExerciseError(f"cannot read {path}: {exc}", "unreadable") from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as exc:
        where = f"{path}, line {exc.lineno}"
        text = (exc.text or "").rstrip("\n")
        caret = ""
        if text and exc.offset:
            stripped = text.lstrip()
            caret = "\n    " + " " * max(exc.offset - 1 - (len(text) - len(stripped)), 0) + "^"
            text = stripped
        shown = f"\n    {text}{caret}" if text else ""
        raise ExerciseError(f"{where}: {type(exc).__name__}: {exc.msg}{shown}\n"
                            "Fix this line (Python cannot read the file) and check again.",
                            "syntax") from None
    module = types.ModuleType(f"minivit_exercise_{name}")
    module.__file__ = path
    try:
        exec(code, module.__dict__)                     # noqa: S102 - the learner's own file
    except (Exception, SystemExit) as exc:              # noqa: BLE001
        raise ExerciseError(f"{path} raised an error when loaded (before any check ran):\n"
                            f"{describe_exception(exc)}", "load") from None
    missing = [n for n in needed if not callable(getattr(module, n, None))]
    if missing:
        raise ExerciseError(f"{path} defines no function {' or '.join(missing)}: keep the "
                            "names of the starter file (`python -m minivit.exercises start "
                            f"{name}` writes a fresh one)", "missing_function")
    return module
