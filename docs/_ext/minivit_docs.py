"""Sphinx extension of the minivit docs.

* MathJax from the npm registry: ``npm pack mathjax@<version>`` at build time,
  the tarball checked against the pinned integrity (sha512), the browser
  build copied into ``_static/mathjax/``. Pages then typeset their equations
  with that copy, also offline; nothing is loaded from a CDN.
* The notebooks: ``examples/notebooks/*.ipynb`` copied into the source tree
  (``docs/notebooks/``, ignored by git) before Sphinx looks for documents, so
  myst-nb executes and renders them.
* Module docstrings: their plain-text derivation tables shown as literal
  blocks in the API reference (see ``plain_text_tables``).
* ``{readme-commands}``: the first two ``bash`` blocks of README.md with the
  paragraph that introduces each, so the front page shows the README's
  commands as they are, never a copy that could drift.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.errors import ConfigError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# The parts of MathJax's "es5" browser build that the tex-mml-chtml component
# loads; the rest (other combined builds, the speech-rule engine) is left out.
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output", "a11y", "ui", "adaptors")


# ----------------------------------------------------------------------------
# MathJax
# ----------------------------------------------------------------------------
def _sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch_mathjax(version: str, integrity: str, cache: Path) -> Path:
    """Return a folder holding ``mathjax/`` (MathJax ``version``'s es5 build).

    Downloads with ``npm pack`` the first time; later builds reuse ``cache``.
    """
    static_root = cache / version
    marker = static_root / "mathjax" / ".integrity"
    if marker.is_file() and marker.read_text().strip() == integrity:
        return static_root
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(
            f"the docs serve MathJax {version} from the npm registry and need `npm` to "
            "fetch it (Debian: `apt-get install npm`); no npm was found on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [npm, "pack", f"mathjax@{version}", "--json", "--pack-destination", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise ConfigError(f"`{' '.join(cmd[1:4])}` failed (exit {proc.returncode}):\n"
                              f"{proc.stderr.strip()[-2000:]}")
        info = json.loads(proc.stdout)[0]
        tarball = Path(tmp) / info["filename"]
        got = _sri(tarball.read_bytes())
        if got != integrity:
            raise ConfigError(f"mathjax@{version} from npm has integrity {got}, expected "
                              f"{integrity} (minivit_mathjax_integrity in docs/conf.py)")
        dest = static_root / "mathjax"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers()
                       if (m.isfile() and m.name.startswith("package/es5/")
                           and m.name[len("package/es5/"):].split("/")[0] in MATHJAX_PARTS)]
            for m in members:
                target = dest / m.name[len("package/es5/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            licence = tar.extractfile("package/LICENSE")
            (dest / "LICENSE").write_bytes(licence.read())
        marker.write_text(integrity + "\n")
    logger.info(f"MathJax {version}: fetched from the npm registry into {dest}")
    return static_root


# ----------------------------------------------------------------------------
# Notebooks
# ----------------------------------------------------------------------------
def sync_notebooks(src: Path, dest: Path) -> None:
    """Make ``dest`` hold exactly the notebooks of ``src`` (copy changed ones only,
    keeping their modification times, so unchanged notebooks are not re-read)."""
    if not src.is_dir():
        raise ConfigError(f"notebook folder {src} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in sorted(src.glob("*.ipynb"))}
    for stale in dest.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name, path in wanted.items():
        target = dest / name
        if not target.exists() or target.read_bytes() != path.read_bytes():
            shutil.copy2(path, target)
    note = dest / "README.txt"
    note.write_text("Copies of examples/notebooks/*.ipynb, made by every docs build; "
                    "edit the originals.\n")
    logger.info(f"notebooks: {len(wanted)} copied from {src} to {dest} (the build runs "
                "the copies; edit the originals)")


def on_config_inited(app, config):
    if config.minivit_mathjax_version:
        static = fetch_mathjax(config.minivit_mathjax_version,
                               config.minivit_mathjax_integrity,
                               Path(config.minivit_mathjax_cache))
        config.html_static_path = [*config.html_static_path, str(static)]
    if config.minivit_notebooks_src:
        sync_notebooks(Path(config.minivit_notebooks_src),
                       Path(app.srcdir) / config.minivit_notebooks_dest)


# ----------------------------------------------------------------------------
# Module docstrings: plain-text derivation tables
# ----------------------------------------------------------------------------
LIST_OR_MARKUP = re.compile(r"^(\*|-|\+|#\.|\d+\.|\.\.|:|=+(\s|$))")
INLINE_LITERAL = re.compile(r"(``.*?``)")


def _escape_pipes(line: str) -> str:
    """``|a - n|`` is ASCII math, not an RST substitution: escape the bars
    outside inline literals."""
    parts = INLINE_LITERAL.split(line)
    return "".join(part if part.startswith("``") else part.replace("|", "\\|")
                   for part in parts)


def plain_text_tables(lines: list[str]) -> list[str]:
    """Show the plain-text tables of a module docstring as literal blocks.

    minivit's layer modules open with a table, written for a terminal: a header
    line (``Forward    Backward (given dy)``) and indented rows aligned in
    columns. As reStructuredText that reads as a definition list, or as an
    error. A paragraph whose first line starts at the margin and whose next
    lines are indented (and that is not a list item or markup) is such a table:
    it is made a literal block, alignment kept. Bars in ASCII math (``|a|``) are
    escaped elsewhere.
    """
    out: list[str] = []
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].strip():
            out.append(lines[i])
            i += 1
            continue
        j = i
        while j < n and lines[j].strip():
            j += 1
        para = lines[i:j]
        if para[0][:1].isspace():              # indented (a literal block's body): as written
            out += para
        elif (len(para) >= 2 and not LIST_OR_MARKUP.match(para[0])
                and any(line[:1].isspace() for line in para[1:])):
            out += [".. code-block:: text", ""] + ["    " + line for line in para]
        else:
            out += [_escape_pipes(line) for line in para]
        i = j
    return out


def on_process_docstring(app, what, name, obj, options, lines):
    if what == "module":
        lines[:] = plain_text_tables(list(lines))


# ----------------------------------------------------------------------------
# {readme-commands}
# ----------------------------------------------------------------------------
FENCE = re.compile(r"^```bash\s*$")


def readme_commands(text: str, count: int = 2) -> list[tuple[str, str]]:
    """The first ``count`` ``bash`` blocks of a Markdown text, each with the
    paragraph just before it: ``[(paragraph, code), ...]``."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines) and len(found) < count:
        if FENCE.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"),
                       None)
            if end is None:
                break
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            start = k
            while start >= 0 and lines[start].strip():
                start -= 1
            found.append(("\n".join(lines[start + 1:k + 1]), "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return found


class ReadmeCommands(SphinxDirective):
    """Insert README.md's first two commands (``bash`` blocks) with their introductions."""

    has_content = False
    option_spec = {}

    def run(self):
        readme = Path(self.env.srcdir).parent / "README.md"
        self.env.note_dependency(str(readme))
        try:
            pairs = readme_commands(readme.read_text(encoding="utf-8"))
        except OSError as exc:
            raise self.error(f"readme-commands: cannot read {readme}: {exc}")
        if len(pairs) < 2:
            raise self.error(f"readme-commands: {readme} has fewer than two ```bash blocks")
        markdown = []
        for intro, code in pairs:
            markdown += [intro, "", "```bash", code, "```", ""]
        container = nodes.container(classes=["readme-commands"])
        self.state.nested_parse(StringList(markdown, source=str(readme)),
                                self.content_offset, container)
        return [container]


def setup(app):
    app.add_config_value("minivit_mathjax_version", "", "env")
    app.add_config_value("minivit_mathjax_integrity", "", "env")
    app.add_config_value("minivit_mathjax_cache", "", "env")
    app.add_config_value("minivit_notebooks_src", "", "env")
    app.add_config_value("minivit_notebooks_dest", "notebooks", "env")
    app.connect("config-inited", on_config_inited)
    app.connect("autodoc-process-docstring", on_process_docstring)
    app.add_directive("readme-commands", ReadmeCommands)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["fetch_mathjax", "readme_commands", "setup", "sync_notebooks"]
