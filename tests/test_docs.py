"""The documentation site: strict builds fail on bad input, naming the file.

Each bad-input test builds a two-page site in a temporary folder with the real
settings of ``docs/conf.py`` (strict: ``-W --keep-going``; notebooks and
executable pages run by myst-nb) and checks that the build fails with a
message naming the offending file: a page that includes a function that no
longer exists, a link to a missing page, a notebook or page whose cell fails.
A good page must build, so that the failures are the bad input's doing.

The real site (every page, the three notebooks, the Chromium check of the
math) is built by ``.ci/run``; ``test_full_site`` does the same here but is
marked slow. Skipped, with the reason, where the ``[docs]`` extra is missing.
"""

from __future__ import annotations

import html as html_module
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOKS = ROOT / "examples" / "notebooks"
HAVE_DOCS = all(importlib.util.find_spec(m) for m in ("sphinx", "myst_nb", "furo"))
needs_docs = pytest.mark.skipif(
    not HAVE_DOCS, reason='the [docs] extra is not installed: pip install -e ".[docs]"')

# conf.py of the temporary sites: the real settings, minus what only the real
# site needs (its notebooks, its static files, MathJax from npm).
CONF = f"""
import sys
sys.path.insert(0, {str(DOCS)!r})
from conf import *                 # noqa: F401,F403  the real settings
minivit_notebooks_src = ""
minivit_mathjax_version = ""
html_static_path = []
html_css_files = []
"""


def _notebook(*sources: str) -> str:
    cells = [{"cell_type": "markdown", "id": "title", "metadata": {},
              "source": "# A notebook"}]
    cells += [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None,
               "outputs": [], "source": src} for i, src in enumerate(sources)]
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": cells, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}})


EXECUTABLE_PAGE = """---
file_format: mystnb
kernelspec:
  name: python3
  display_name: Python 3
---

# An executable page

```{{code-cell}} python
{code}
```
"""


def build(tmp_path: Path, pages: dict[str, str]) -> subprocess.CompletedProcess:
    """Build a site of ``index`` plus ``pages`` (name -> text) with -W --keep-going."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(CONF)
    toc = "\n".join(Path(name).stem for name in pages)
    (src / "index.md").write_text(f"# Test site\n\n```{{toctree}}\n{toc}\n```\n")
    for name, text in pages.items():
        (src / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(src), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def source_file(tmp_path: Path, path: Path) -> str:
    """``path`` as a page in the temporary site must name it (relative to the site)."""
    return os.path.relpath(path, tmp_path / "src")


@needs_docs
def test_good_pages_build(tmp_path):
    layernorm = source_file(tmp_path, ROOT / "minivit" / "layers" / "layernorm.py")
    result = build(tmp_path, {
        "good.md": f"# Good\n\n[back](index.md)\n\n```{{literalinclude}} {layernorm}\n"
                   ":pyobject: LayerNorm.backward\n```\n",
        "good_nb.ipynb": _notebook("print(6 * 7)"),
        "good_exec.md": EXECUTABLE_PAGE.format(code="assert 6 * 7 == 42"),
    })
    assert result.returncode == 0, output(result)
    html = (tmp_path / "html" / "good.html").read_text()
    code = html_module.unescape(re.sub(r"<[^>]+>", "", html))
    assert "def backward(self, dout):" in code           # the code came from the source file
    assert "42" in (tmp_path / "html" / "good_nb.html").read_text()


@needs_docs
def test_include_of_missing_function_fails_naming_the_page(tmp_path):
    layernorm = source_file(tmp_path, ROOT / "minivit" / "layers" / "layernorm.py")
    result = build(tmp_path, {
        "stale.md": f"# Stale\n\n```{{literalinclude}} {layernorm}\n"
                    ":pyobject: LayerNorm.backward_that_no_longer_exists\n```\n"})
    text = output(result)
    assert result.returncode != 0
    assert "stale.md" in text
    assert "LayerNorm.backward_that_no_longer_exists" in text and "not found" in text


@needs_docs
def test_link_to_missing_page_fails_naming_the_page(tmp_path):
    result = build(tmp_path, {"links.md": "# Links\n\nSee [the layers](no_such_page.md).\n"})
    text = output(result)
    assert result.returncode != 0
    assert "links.md" in text and "no_such_page.md" in text


@needs_docs
def test_missing_page_in_table_of_contents_fails(tmp_path):
    result = build(tmp_path, {"real.md": "# Real\n"})
    assert result.returncode == 0, output(result)
    index = tmp_path / "src" / "index.md"
    index.write_text(index.read_text().replace("real\n", "real\nghost\n"))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
         str(tmp_path / "src"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300)
    text = output(result)
    assert result.returncode != 0
    assert "index.md" in text and "ghost" in text


@needs_docs
@pytest.mark.parametrize("name", ["broken.ipynb", "broken_page.md"])
def test_failing_cell_fails_naming_the_file(tmp_path, name):
    code = 'print("first cell runs")', 'raise ValueError("this cell fails on purpose")'
    text = (_notebook(*code) if name.endswith(".ipynb")
            else EXECUTABLE_PAGE.format(code="\n".join(code)))
    result = build(tmp_path, {name: text})
    out = output(result)
    assert result.returncode != 0
    assert name in out
    assert "ValueError" in out and "this cell fails on purpose" in out


# -- pieces of the docs extension ----------------------------------------------
@pytest.fixture
def ext():
    if not HAVE_DOCS:
        pytest.skip('the [docs] extra is not installed: pip install -e ".[docs]"')
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import minivit_docs
        yield minivit_docs
    finally:
        sys.path.remove(str(DOCS / "_ext"))


def test_readme_commands_are_the_readmes_first_two(ext):
    pairs = ext.readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(pairs) == 2
    (train_intro, train), (test_intro, test) = pairs
    assert "python examples/train_mnist.py" in train and "Train on MNIST" in train_intro
    assert "python -m pytest" in test and "Run the tests" in test_intro


def test_plain_text_tables_become_literal_blocks(ext):
    doc = textwrap.dedent("""\
        LayerNorm over the last axis.

        Forward                 Backward (given dy)
          mu = mean(x)            dbeta += sum_rows dy
          y  = xhat * g + b       dx = rstd * (...)

        Relative error: |a - n| / max(|a|, |n|).

        * a list item that goes
          on to a second line
        """).splitlines()
    out = ext.plain_text_tables(doc)
    i = out.index(".. code-block:: text")
    assert out[i + 2].startswith("    Forward") and out[i + 3] == "      mu = mean(x)" + \
        " " * 12 + "dbeta += sum_rows dy"
    assert r"\|a - n\|" in "\n".join(out)
    assert "* a list item that goes" in out and "  on to a second line" in out


def test_notebook_sync_copies_and_prunes(ext, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "a.ipynb").write_text(_notebook("1"))
    dest.mkdir()
    (dest / "gone.ipynb").write_text("{}")
    ext.sync_notebooks(src, dest)
    assert sorted(p.name for p in dest.glob("*.ipynb")) == ["a.ipynb"]
    assert (dest / "a.ipynb").read_text() == (src / "a.ipynb").read_text()


# -- what holds without the extra ------------------------------------------------
def test_notebooks_are_committed_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["attention_forward_backward.ipynb", "backprop_by_hand.ipynb",
                     "train_and_look_inside.ipynb", "your_first_backward.ipynb"]
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, \
                    f"{path.name}: commit notebooks without outputs"


def test_every_layer_page_includes_code_and_runs_a_check():
    pages = sorted((DOCS / "layers").glob("*.md"))
    assert {p.stem for p in pages} >= {"linear", "patch_embed", "layernorm", "attention", "gelu",
                                       "dropout", "block", "cross_entropy", "vit"}
    for page in pages:
        if page.stem == "index":
            continue
        text = page.read_text(encoding="utf-8")
        assert "{literalinclude}" in text and ":pyobject:" in text, page.name
        assert "{code-cell}" in text and "assert" in text, page.name


@needs_docs
@pytest.mark.slow
def test_full_site(tmp_path):
    """The real site, strict, then the headless-Chromium check of a layer page."""
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS),
         str(out)], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert result.returncode == 0, output(result)[-5000:]
    check = subprocess.run(
        [sys.executable, str(DOCS / "check_math.py"), "--site", str(out),
         "--screenshot", str(tmp_path / "layernorm.png")],
        capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


def test_math_check_tells_typeset_from_raw_tex():
    """check_math's verdict on the page as rendered (no browser needed here)."""
    spec = importlib.util.spec_from_file_location("check_math", DOCS / "check_math.py")
    check_math = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_math)
    source = ('<script src="../_static/mathjax/tex-mml-chtml.js"></script>'
              '<p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>'
              '<div class="math notranslate nohighlight">\\[\\frac{a}{b}\\]</div>')
    typeset = source.replace("\\(x^2\\)", "<mjx-container>x</mjx-container>").replace(
        "\\[\\frac{a}{b}\\]", "<mjx-container>a/b</mjx-container>")
    problems, facts = check_math.check_dom(source, typeset)
    assert problems == [] and facts["equations"] == facts["typeset"] == 2
    problems, _ = check_math.check_dom(source, source)             # MathJax never ran
    assert any("only 0 of 2" in p for p in problems)
    assert any("raw TeX" in p for p in problems)
    cdn = source.replace("../_static/mathjax", "https://cdn.example.org/mathjax")
    problems, _ = check_math.check_dom(cdn, typeset)
    assert any("another host" in p for p in problems)
