"""Special functions that the array module lacks: ``erf`` on NumPy or CuPy."""

from __future__ import annotations

from minivit import backend


def erf(x, out=None):
    """The error function, elementwise, on the active backend.

    SciPy's ``scipy.special.erf`` on NumPy and ``cupyx.scipy.special.erf`` on
    CuPy, accurate to a few units in the last place (``tests/test_kernels.py``
    checks it against Python's ``math.erf``), so gradient checks see the
    exact function.
    """
    if backend.name == "cupy":
        from cupyx.scipy.special import erf as backend_erf
    else:
        try:
            from scipy.special import erf as backend_erf
        except ImportError:
            raise ImportError(
                "the exact (erf) GELU of pretrained ViTs needs SciPy: pip install -e "
                "'.[pretrained]' (or pip install scipy); gelu='tanh' needs nothing") from None
    return backend_erf(x) if out is None else backend_erf(x, out=out)
