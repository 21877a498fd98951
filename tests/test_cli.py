"""The command line takes its defaults from the recipes alone, and ``--help``
shows them (for the recipe the command line picks)."""

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from minivit.cli import options
from minivit.config import PRESETS

OPTIONS_FILE = Path(options.__file__)
# Defaults a recipe cannot hold (options.py's docstring says why).
DECLARED = {"dataset", "collective_timeout"}


def _help(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        options.parse_args([*argv, "--help"])
    return " ".join(out.getvalue().split())


def _shown_default(text: str, flag: str) -> str:
    """The "(default: ...)" of ``flag``'s entry in the help text."""
    # the entry, not the usage line ("[--dim DIM]"); up to its own "(default: ...)"
    match = re.search(r"(?<!\[)" + re.escape(flag) + r"\b(?!-)((?:(?!\(default: ).)*)"
                      r"\(default: ([^)]*)\)", text)
    assert match, f"{flag}: no default shown"
    return match.group(2)


def test_no_add_argument_declares_a_default_of_its_own():
    declared = []
    for node in ast.walk(ast.parse(OPTIONS_FILE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flag = node.args[0].value
            for kw in node.keywords:
                if kw.arg == "default" and not (isinstance(kw.value, ast.Constant)
                                                and kw.value.value is None):
                    declared.append(flag.lstrip("-").replace("-", "_"))
    assert set(declared) == DECLARED


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parsed_defaults_are_the_recipe(name):
    args = options.parse_args(["--preset", name])
    for key, value in PRESETS[name].items():
        assert getattr(args, key) == value, key
    assert args.preset == name


def test_every_recipe_value_is_an_option():
    dests = {a.dest for a in options.build_parser()._actions}
    for name, recipe in PRESETS.items():
        assert set(recipe) <= dests, (name, set(recipe) - dests)


@pytest.mark.parametrize("argv, name", [([], "mnist"), (["--dataset", "cifar10"], "cifar10"),
                                        (["--preset", "mnist-long"], "mnist-long")])
def test_help_shows_the_recipe_that_applies(argv, name):
    text = _help(argv)
    parser = options.build_parser()
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    for key, value in PRESETS[name].items():
        assert _shown_default(text, flags[key]) == str(value), key


def test_help_tells_mnist_and_cifar10_apart():
    mnist, cifar = _help([]), _help(["--dataset", "cifar10"])
    assert _shown_default(mnist, "--dim") == "64" and _shown_default(cifar, "--dim") == "128"
    assert _shown_default(mnist, "--lr") == "0.003" and _shown_default(cifar, "--lr") == "0.001"


def test_a_flag_still_wins_over_the_recipe():
    args = options.parse_args(["--dataset", "cifar10", "--lr", "0.5", "--no-augment"])
    assert args.lr == 0.5 and args.augment is False and args.dim == PRESETS["cifar10"]["dim"]
