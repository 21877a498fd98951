"""The "Exercise" section at the end of each docs/layers page, written from the
exercises themselves (command, what the checker tests, the hints behind a
click), so that the page and the grader cannot drift apart::

    python -m minivit.exercises.pages docs/layers     # rewrite the sections

``tests/test_exercises.py`` checks that every page ends with its section as
this module writes it.
"""

from __future__ import annotations

import os
import sys

from minivit.atomic import write_text

MARK = "<!-- the exercise section, written by: python -m minivit.exercises.pages -->"

# page -> the exercises at its end
PAGES = {"linear": ("linear",), "layernorm": ("layernorm",), "gelu": ("gelu",),
         "attention": ("softmax", "attention"), "patch_embed": ("patch_embed",),
         "cross_entropy": ("cross_entropy",), "block": ("block",), "vit": ("vit",)}


def _one(ex, level: str) -> list[str]:
    n = ex.name
    out = [f"{level} Exercise: write the {ex.title} backward yourself", "",
           "```bash",
           f"python -m minivit.exercises start {n}      # writes minivit_exercises/{n}.py",
           f"python -m minivit.exercises check {n}      # grades it; --hint 2, 3: more help",
           f"python -m minivit.exercises solution {n}   # the library's code, to compare",
           "```", "",
           "The starter file stands alone (plain NumPy): `forward` is given, `backward` is a "
           "stub under the table of this page with its right-hand column to fill in. "
           f"**What the checker tests:** {ex.checks}. Every gradient is compared with finite "
           "differences in float64 with a random, mixed-sign upstream gradient (relative "
           "error at most $10^{-6}$); a wrong one is named, with its worst element, how many "
           "elements are wrong and where. Bad input (a syntax error, a wrong shape or dtype, "
           "a backward that raises, returns `None` or changes its input in place) gets a "
           "message, not a traceback.", "",
           "When the numbers are those of a typical mistake, the checker says which, with "
           "hints in three levels (`--hint 1` to `3`). The hints, hidden until you click:", ""]
    for m in ex.mistakes:
        out += ["<details>", f"<summary>{m.title}</summary>", ""]
        out += [f"{i}. {text}" for i, text in enumerate(m.hints, 1)]
        out += ["", "</details>", ""]
    if ex.swap:
        out += ["Once it passes, train a model with it (every "
                f"`{ex.swap}` of the model then runs your code):", "", "```bash",
                f"python examples/train_mnist.py --use-exercise {n}=minivit_exercises/{n}.py",
                "```", ""]
    out += ["The checker on the library's own backward, as this page is built:", "",
            "```{code-cell} python", "from minivit import exercises", "",
            f"result = exercises.grade(exercises.get({n!r}), exercises.get({n!r}).reference)",
            "print(result.text)", "assert result.passed", "```", "",
            f"and on the first typical mistake, {ex.mistakes[0].title} "
            "(what the learner reads; click to show):", "",
            "```{code-cell} python", ":tags: [hide-output]", "",
            f"ex = exercises.get({n!r})",
            "wrong = exercises.grade(ex, exercises.base.Fns(ex.starter_module.forward, "
            "ex.mistakes[0].backward))",
            "print(wrong.text)",
            f"assert not wrong.passed and wrong.mistakes[0] == {ex.mistakes[0].key!r}",
            "```", ""]
    return out


def section(page: str) -> str:
    """The Markdown of the exercise section of ``docs/layers/<page>.md``."""
    from minivit import exercises
    names = PAGES[page]
    lines = [MARK, ""]
    if len(names) > 1:
        lines += ["## Exercises", ""]
        for name in names:
            lines += _one(exercises.get(name), "###")
    else:
        lines += _one(exercises.get(names[0]), "##")
    return "\n".join(lines).rstrip() + "\n"


def rewrite(folder: str) -> list[str]:
    """Replace (or append) the section at the end of each page in ``folder``."""
    done = []
    for page in PAGES:
        path = os.path.join(folder, f"{page}.md")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        above = text.split(MARK)[0].rstrip() + "\n\n"
        write_text(path, above + section(page))
        done.append(path)
    return done


if __name__ == "__main__":
    for written in rewrite(sys.argv[1] if len(sys.argv) > 1 else "docs/layers"):
        print("wrote", written)
