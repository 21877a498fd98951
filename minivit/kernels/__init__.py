"""Fast kernels: the layers' arithmetic, rearranged for speed, each beside its reference.

``minivit/layers/<layer>.py`` is the derivation: its ``forward`` and
``backward`` compute the lines of the table that opens the file, in plain
``xp`` code. The functions here compute the same things faster: in place on
buffers they are given, on blocks of rows on every core
(``minivit.parallel.threads``), with reductions as BLAS products, and, where
float32 allows it, through a fitted approximation with a tested error bound.
A layer asks for them in one line::

    if kernels.enabled():              # the same function, faster: minivit/kernels/gelu.py

One file per kind of work, each function's docstring naming the reference it
replaces; ``tests/test_kernels.py`` checks every fast kernel against its
reference in float32 and float64, edge values included.

==================  ======================================================
file                what it holds
==================  ======================================================
reductions.py       row sums, means and dot products as BLAS products
erf.py              a polynomial by Horner's rule; a float32 rational erf
gelu.py             GELU (both forms) through exp, with dy/dx at once
layernorm.py        LayerNorm forward and backward on blocks of rows
attention.py        the per-head scores, softmax and values, batch-blocked
linear.py           y = x W^T + b, a share of the rows per core
==================  ======================================================

The switch: ``MINIVIT_KERNELS=fast`` (the default) or ``reference`` (every
layer runs the code of its table, end to end: the code a learner reads and
can step through in a debugger). Within a process, :func:`use` or, for a
block, :func:`using`. Both paths compute the same functions; the gradient
checks and a short training run in both modes.
"""

from __future__ import annotations

import contextlib
import os

MODES = ("fast", "reference")
ENV_VAR = "MINIVIT_KERNELS"


def _checked(mode: str, where: str) -> str:
    value = str(mode).strip().lower()
    if value not in MODES:
        raise ValueError(f"{where} must be one of {', '.join(MODES)} ('fast', the default, "
                         f"runs minivit/kernels/; 'reference' runs the layers' plain "
                         f"derivation code), got {mode!r}")
    return value


_mode = _checked(os.environ.get(ENV_VAR, "").strip() or "fast", ENV_VAR)


def mode() -> str:
    """``"fast"`` or ``"reference"``: the kernels the layers run now."""
    return _mode


def enabled() -> bool:
    """True when the layers run the fast kernels of this package."""
    return _mode == "fast"


def use(new_mode: str) -> None:
    """Switch every layer to ``"fast"`` or ``"reference"`` (process-wide)."""
    global _mode
    _mode = _checked(new_mode, "kernels.use()")


@contextlib.contextmanager
def using(new_mode: str):
    """``with kernels.using("reference"):`` runs a block on the reference code."""
    previous = _mode
    use(new_mode)
    try:
        yield
    finally:
        use(previous)


from minivit.kernels import attention, erf, gelu, layernorm, linear, reductions  # noqa: E402

__all__ = ["MODES", "ENV_VAR", "mode", "enabled", "use", "using"]
