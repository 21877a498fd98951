"""Sphinx configuration of the minivit documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -E -W --keep-going -b html docs docs/_build/html

-W turns every warning into an error: a broken link, a page missing from the
table of contents, a ``literalinclude`` of a function that no longer exists,
a notebook cell or a gradient check that fails. -E reads every page afresh:
Sphinx reports a page's warnings only when it reads that page, so without it
a second build after a failure could pass without looking at the bad page
again. The pages under ``layers/`` and the notebooks are executed whenever
they are read (myst-nb), so the outputs shown are those of the code as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))                 # autodoc imports minivit from the checkout

project = "minivit"
author = "the minivit authors"
copyright = "minivit authors, MIT licence"    # noqa: A001 (Sphinx's name)
release = "0.1.0"

extensions = [
    "myst_nb",                   # Markdown (MyST), executable Markdown pages and notebooks
    "sphinx.ext.autodoc",        # API reference from the docstrings
    "sphinx.ext.napoleon",       # Google-style "Args:" / "Returns:" sections
    "sphinx.ext.mathjax",
    "minivit_docs",              # MathJax from npm, notebook sync, README commands
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "figures/*.md",
                    "**.ipynb_checkpoints"]

# --- MyST ------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3         # [text](page.md#a-heading) links are checked too
myst_dmath_double_inline = True

# --- execution (myst-nb) ---------------------------------------------------
# "force": every executable page and notebook runs on every build in which it
# is read, so no output can be left over from older code.
nb_execution_mode = "force"
nb_execution_timeout = 300       # seconds per cell (the training cell needs ~1 min)
nb_execution_allow_errors = False
nb_execution_raise_on_error = False   # a failing cell is a warning naming the file:
nb_execution_show_tb = True           # with -W that fails the build, and --keep-going
nb_merge_streams = True               # still reports every other problem first
nb_ipywidgets_js = {}                 # no widget scripts from a CDN

# The notebooks live in examples/notebooks/ (runnable on their own); each build
# copies them to docs/notebooks/ (ignored by git) so Sphinx can read them.
minivit_notebooks_src = str(ROOT / "examples" / "notebooks")
minivit_notebooks_dest = "notebooks"

# --- math: MathJax 3 from the npm registry, served with the site -------------
# minivit_docs fetches mathjax@<version> with `npm pack` at build time, checks
# it against the pinned integrity and copies it to _static/mathjax/: the pages
# load MathJax from the site itself, never from a CDN.
minivit_mathjax_version = "3.2.2"
minivit_mathjax_integrity = ("sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+"
                             "x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==")
minivit_mathjax_cache = str(DOCS / "_build" / "mathjax")
mathjax_path = "mathjax/tex-mml-chtml.js"

# --- autodoc -----------------------------------------------------------------
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# --- HTML --------------------------------------------------------------------
html_theme = "furo"
html_title = "minivit"
html_static_path = ["_static"]
html_css_files = ["minivit.css"]
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
