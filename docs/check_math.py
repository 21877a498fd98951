"""Check, as a reader would, that the built site shows typeset equations, offline.

    python docs/check_math.py                       # the LayerNorm page of docs/_build/html
    python docs/check_math.py --page layers/attention.html --screenshot shot.png

Opens a layer page of the built site in headless Chromium (Debian's
``chromium``) with every network host unreachable (a dead proxy and a
resolver that finds nothing), lets its scripts run, and checks the page as
the browser rendered it:

* every equation (``class="math"`` in the HTML) was typeset by MathJax into
  an ``mjx-container``, none is a MathJax error (``mjx-merror``), and no raw
  TeX delimiter (``\\(`` or ``\\[``) is left in the visible text;
* MathJax was loaded from the site itself, and no page of the site loads a
  script, style sheet or image from another host;
* a screenshot of the page (default ``docs/_build/math_check/<page>.png``)
  is written and is not blank, for a person to look at.

Exits 0 and prints the verdict when all holds; otherwise prints what failed
and exits 1. Chromium missing is a failure too (exit 2), not a skip.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EXTERNAL = re.compile(
    r"<(script|img|iframe)\b[^>]*\bsrc=\"(https?:)?//[^\"]*\""
    r"|<link\b[^>]*\bhref=\"(https?:)?//[^\"]*\"[^>]*>", re.IGNORECASE)


def find_browser() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def browser_args(browser: str, profile: str) -> list[str]:
    return [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", "--disable-extensions", "--disable-background-networking",
        f"--user-data-dir={profile}",
        # No host on the network can be reached: a CDN would fail to load.
        "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--allow-file-access-from-files",
        # Virtual time: the page's scripts (MathJax, its fonts) run to completion.
        "--virtual-time-budget=20000", "--run-all-compositor-stages-before-draw",
    ]


def run_browser(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def strip_blocks(html: str, *tags: str) -> str:
    for tag in tags:
        html = re.sub(rf"<{tag}\b.*?</{tag}>", " ", html, flags=re.DOTALL | re.IGNORECASE)
    return html


def check_dom(source: str, dom: str) -> tuple[list[str], dict]:
    """Compare the page as built (``source``) with the page as rendered (``dom``)."""
    problems = []
    equations = len(re.findall(r"class=\"math[\s\"]", source))
    typeset = len(re.findall(r"<mjx-container\b", dom))
    errors = len(re.findall(r"<mjx-merror\b", dom))
    visible = strip_blocks(dom, "script", "style", "pre", "mjx-assistive-mml", "textarea")
    raw = len(re.findall(r"\\\(|\\\[", visible))
    mathjax_src = re.findall(r"<script\b[^>]*src=\"([^\"]*mathjax[^\"]*)\"", source, re.I)
    facts = dict(equations=equations, typeset=typeset, errors=errors, raw_tex=raw,
                 mathjax=mathjax_src[0] if mathjax_src else None)
    if equations == 0:
        problems.append("the page has no equations (class=\"math\") to check")
    if typeset < equations:
        problems.append(f"only {typeset} of {equations} equations were typeset by MathJax")
    if errors:
        problems.append(f"{errors} equation(s) are MathJax errors (mjx-merror)")
    if raw:
        problems.append(f"{raw} raw TeX delimiter(s) (\\( or \\[) left in the visible text")
    if not mathjax_src:
        problems.append("the page loads no MathJax script")
    elif re.match(r"(https?:)?//", mathjax_src[0]):
        problems.append(f"MathJax is loaded from another host: {mathjax_src[0]}")
    return problems, facts


def check_site_is_self_contained(site: Path) -> list[str]:
    problems = []
    for page in sorted(site.rglob("*.html")):
        for match in EXTERNAL.finditer(page.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{page.relative_to(site)} loads from another host: "
                            f"{match.group(0)[:160]}")
    return problems


def png_is_blank(path: Path) -> bool | None:
    """True if every pixel has the same colour; None when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError:
        return None
    with Image.open(path) as img:
        lo_hi = img.convert("L").getextrema()
    return lo_hi[0] == lo_hi[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", default=str(DOCS / "_build" / "html"),
                   help="built site (default %(default)s)")
    p.add_argument("--page", default="layers/layernorm.html",
                   help="page to open, relative to the site (default %(default)s)")
    p.add_argument("--screenshot", default=None,
                   help="PNG to write (default docs/_build/math_check/<page>.png)")
    p.add_argument("--window", default="1280,1700", help="width,height (default %(default)s)")
    args = p.parse_args(argv)

    site = Path(args.site).resolve()
    page = site / args.page
    if not page.is_file():
        print(f"check_math: {page} does not exist; build the site first:\n"
              "  python -m sphinx -E -W --keep-going -b html docs docs/_build/html")
        return 1
    browser = find_browser()
    if browser is None:
        print("check_math: no Chromium found (Debian: apt-get install chromium; or set "
              "CHROMIUM to the browser's path)")
        return 2
    shot = Path(args.screenshot) if args.screenshot else (
        DOCS / "_build" / "math_check" / (Path(args.page).stem + ".png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    url = page.as_uri()

    with tempfile.TemporaryDirectory() as profile:
        base = browser_args(browser, profile)
        dump = run_browser(base + ["--dump-dom", url])
        if dump.returncode != 0 or "<html" not in dump.stdout:
            print(f"check_math: {browser} --dump-dom failed (exit {dump.returncode}):\n"
                  f"{dump.stderr[-2000:]}")
            return 1
        if shot.exists():
            shot.unlink()
        taken = run_browser(base + [f"--window-size={args.window}",
                                    f"--screenshot={shot}", url])
    problems, facts = check_dom(page.read_text(encoding="utf-8"), dump.stdout)
    problems += check_site_is_self_contained(site)
    if taken.returncode != 0 or not shot.is_file():
        problems.append(f"no screenshot was written (exit {taken.returncode}): "
                        f"{taken.stderr[-1000:]}")
    elif png_is_blank(shot):
        problems.append(f"the screenshot {shot} is blank")

    print(f"check_math: {args.page} in {Path(browser).name}, network hosts unreachable: "
          f"{facts['typeset']} MathJax containers for {facts['equations']} equations, "
          f"{facts['errors']} MathJax errors, {facts['raw_tex']} raw TeX delimiters left; "
          f"MathJax from {facts['mathjax']}")
    print(f"check_math: screenshot {shot}")
    if problems:
        print("check_math: FAILED\n  " + "\n  ".join(problems))
        return 1
    print("check_math: OK, equations are typeset, offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
