"""The learner's folder: starter files, and a small ``progress.json`` of results.

The folder is ``./minivit_exercises`` unless ``--dir`` (or the environment
variable ``MINIVIT_EXERCISES``) says otherwise; nothing is ever written
inside the installed package. ``progress.json`` records, per exercise, the
last check's verdict and the SHA-256 of the file checked, so that the list can
tell "passed" from "edited since it passed".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from minivit.atomic import write_text
from minivit.exercises.loader import ExerciseError

DEFAULT_FOLDER = "minivit_exercises"
PROGRESS = "progress.json"
MINIVIT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def folder_of(folder=None) -> str:
    return os.path.abspath(folder or os.environ.get("MINIVIT_EXERCISES") or DEFAULT_FOLDER)


def inside_package(path) -> bool:
    path = os.path.realpath(os.path.abspath(path))
    root = os.path.realpath(MINIVIT_DIR)
    return path == root or path.startswith(root + os.sep)


def file_of(ex, folder=None) -> str:
    return os.path.join(folder_of(folder), f"{ex.name}.py")


def _digest(path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def read(folder=None) -> dict:
    path = os.path.join(folder_of(folder), PROGRESS)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(ex, path, result, folder=None) -> bool:
    """Remember the verdict on ``path``; False (nothing written) inside the package."""
    where = folder_of(folder)
    if inside_package(where):
        return False
    data = read(folder)
    data[ex.name] = {"file": os.path.abspath(path), "passed": bool(result.passed),
                     "problem": result.problem, "wrong": list(result.wrong),
                     "sha256": _digest(path)}
    write_text(os.path.join(where, PROGRESS), json.dumps(data, indent=1, sort_keys=True) + "\n")
    return True


def status(ex, folder=None, data=None) -> str:
    """'not started', 'started', 'passed', 'failed (dx)', 'edited since it passed', ..."""
    data = read(folder) if data is None else data
    entry = data.get(ex.name)
    path = entry.get("file") if isinstance(entry, dict) else None
    path = path if path and os.path.isfile(path) else file_of(ex, folder)
    if not os.path.isfile(path):
        return "not started"
    if not isinstance(entry, dict):
        return "started, not checked yet"
    verdict = "passed" if entry.get("passed") else "failed"
    if entry.get("sha256") != _digest(path):
        return f"edited since it {verdict}"
    if entry.get("passed"):
        return "passed"
    if entry.get("problem") == "stub":
        return "started, backward not written yet"
    wrong = entry.get("wrong") or []
    return f"failed ({', '.join(wrong)})" if wrong else f"failed ({entry.get('problem')})"


def start(ex, folder=None, force: bool = False, ask=None) -> str:
    """Copy the starter into the folder; returns its path. An existing file is
    kept unless ``force`` or ``ask(question)`` says yes."""
    where = folder_of(folder)
    if inside_package(where):
        raise ExerciseError(f"{where} is inside the installed minivit package: choose a "
                            "folder of your own with --dir", "folder")
    target = os.path.join(where, f"{ex.name}.py")
    if os.path.exists(target) and not force:
        if ask is None or not ask(f"{target} exists (your work?). Overwrite it with a fresh "
                                  "starter? [y/N] "):
            raise ExerciseError(f"{target} already exists: kept as it is. To start over, "
                                "pass --force, or move it away first", "exists")
    os.makedirs(where, exist_ok=True)
    tmp = target + ".tmp"
    shutil.copyfile(ex.starter_path, tmp)
    os.replace(tmp, target)
    return target
