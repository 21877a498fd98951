"""Learn by doing: write each backward yourself, graded by the gradient check.

On the command line::

    python -m minivit.exercises                      # the exercises, with your status
    python -m minivit.exercises start layernorm      # writes minivit_exercises/layernorm.py
    python -m minivit.exercises check layernorm      # grades it (--hint 2, 3: more help)
    python -m minivit.exercises solution layernorm   # the library's own code

Each starter file stands alone (plain NumPy): the forward is given, the
backward is a stub under its derivation table. ``check`` runs your backward
on several shapes in float64 with random mixed-sign upstream gradients,
compares every gradient with finite differences (:mod:`minivit.gradcheck`),
and says which one is wrong, by how much, on which elements, and, when it is
one of the typical mistakes, which (with hints in levels). A finished
exercise can run inside a real model: :class:`use_exercise`, or
``--use-exercise layernorm=FILE`` on ``examples/train_mnist.py``.

The API: :data:`EXERCISES`, :func:`get`, :func:`check`, :func:`start`,
:func:`solution`, :func:`status`, :class:`use_exercise`.
"""

from minivit.exercises.catalog import (EXERCISES, CheckResult, ExerciseError, check, check_file,
                                       get, grade, listing, load_file, solution, start, status)
from minivit.exercises.swap import use_exercise, use_exercises

__all__ = ["EXERCISES", "CheckResult", "ExerciseError", "check", "check_file", "get", "grade",
           "listing", "load_file", "solution", "start", "status", "use_exercise",
           "use_exercises"]
