"""The switch between the kernels: which code the layers run.

==============  ==========================================================
mode            what the layers run
==============  ==========================================================
``fast``        the default: the fused kernels of ``minivit/kernels/fused/``
                where numba is installed and the arrays are NumPy float32
                or float64; the NumPy kernels of ``minivit/kernels/``
                otherwise (CuPy, other dtypes, no numba), silently
``fused``       as ``fast``, but numba is required: without it (or with a
                version older than ``fused.MIN_NUMBA``) choosing this mode
                is an error that names the extra to install
``numpy``       the NumPy kernels of ``minivit/kernels/``, never the fused ones
``reference``   the layers' plain derivation code, end to end
==============  ==========================================================

Set by ``MINIVIT_KERNELS`` at import, or :func:`use` / :func:`using`.
"""

from __future__ import annotations

import contextlib
import os

import numpy

from minivit import backend
from minivit.kernels import fused

MODES = ("fast", "fused", "numpy", "reference")
ENV_VAR = "MINIVIT_KERNELS"
_FUSED_TYPES = (numpy.float32, numpy.float64)


def _checked(mode: str, where: str) -> str:
    value = str(mode).strip().lower()
    if value not in MODES:
        raise ValueError(f"{where} must be one of {', '.join(MODES)} ('fast', the default, "
                         f"runs the fused kernels where numba is installed, else "
                         f"minivit/kernels/; 'fused' requires numba; 'numpy' runs "
                         f"minivit/kernels/ only; 'reference' runs the layers' plain "
                         f"derivation code), got {mode!r}")
    if value == "fused":
        fused.require()
    return value


_mode = _checked(os.environ.get(ENV_VAR, "").strip() or "fast", ENV_VAR)


def mode() -> str:
    """``"fast"``, ``"fused"``, ``"numpy"`` or ``"reference"``: the kernels the layers run now."""
    return _mode


def enabled() -> bool:
    """True when the layers run the kernels of this package (fused or NumPy)."""
    return _mode != "reference"


def use(new_mode: str) -> None:
    """Switch every layer to one of :data:`MODES` (process-wide)."""
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


def fused_for(*arrays, host_data=False) -> bool:
    """True when the fused kernels should run on ``arrays``: the mode allows
    them, numba is usable, the backend is NumPy, and every array is a NumPy
    float32 or float64 array of one dtype. Anything else runs the NumPy
    kernels. ``host_data=True``: a kernel for the data on the host (the
    augmentation's warp), which runs there whatever the backend."""
    if _mode not in ("fast", "fused") or not fused.available() \
            or (backend.name != "numpy" and not host_data):
        return False
    dtype = arrays[0].dtype
    if dtype.type not in _FUSED_TYPES:
        return False
    # host arrays only: numba compiles for NumPy's arrays (a device array of
    # another library, or an ndarray subclass, takes the NumPy kernels); a
    # plain loop, as this runs before every fused call
    for a in arrays:
        if type(a) is not numpy.ndarray or a.dtype != dtype:
            return False
    return True
