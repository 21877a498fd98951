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
dropout.py          dropout's mask and product from the same random numbers
loss.py             the cross-entropy's fused path (NumPy runs the plain lines)
adamw.py            the AdamW update's fused path (else the NumPy kernel)
switch.py           the switch below
fused/              the same functions as compiled loops (numba, the extra
                    ``fast``): ``minivit/kernels/fused/__init__.py``
==================  ======================================================

The switch (``switch.py``): ``MINIVIT_KERNELS=fast`` (the default: the fused
kernels where numba is installed and the arrays are NumPy float32/float64,
the NumPy kernels otherwise), ``fused`` (numba required: an error naming the
extra where it is missing), ``numpy`` (the NumPy kernels only) or
``reference`` (every layer runs the code of its table, end to end: the code
a learner reads and can step through in a debugger). Within a process,
:func:`use` or, for a block, :func:`using`. All paths compute the same
functions; the gradient checks and a short training run in each mode.
"""

from __future__ import annotations

from minivit.kernels.switch import ENV_VAR, MODES, enabled, mode, use, using  # noqa: F401
from minivit.kernels import (adamw, attention, dropout, erf, gelu, layernorm,  # noqa: E402
                             linear, loss, reductions)

__all__ = ["MODES", "ENV_VAR", "mode", "enabled", "use", "using"]
