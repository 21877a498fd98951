"""The error function without SciPy's one-element-at-a-time loop, and Horner's rule.

``erf_rational`` replaces ``minivit.special.erf`` (SciPy's or CuPy's erf)
for float32 on NumPy; ``polynomial`` is shared with the float32 exact GELU
of ``minivit/kernels/gelu.py``.
"""

from __future__ import annotations

from minivit import backend
from minivit.special import erf as exact_erf

# erf(x) = x P(x^2) / Q(x^2) on [-4, 4], a rational approximation for float32
# (the coefficients of Eigen's float32 erf); beyond |x| = 4, erf(x) = +-1 to
# float32 precision (1 - erf(4) = 1.5e-8), so x is clamped there.
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
          -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
          -2.72614225801306e-10)                 # P's coefficients of s^0 .. s^6, s = x^2
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
          -2.13374055278905e-04, -1.45660718464996e-05)   # Q's, s^0 .. s^4
ERF_FLOAT32_MAX_ABS_ERROR = 5e-7                 # bound checked by tests/test_kernels.py


def polynomial(s, coefficients):
    """sum_k coefficients[k] s^k by Horner's rule, in place on one new array."""
    value = s * coefficients[-1]
    for c in coefficients[-2:0:-1]:
        value += c
        value *= s
    value += coefficients[0]
    return value


def erf_rational(x, out):
    """``out = erf(x)`` for float32 by the rational form above: only
    multiplications, additions and one division, which NumPy runs with SIMD
    on every x86 CPU (SciPy's erf runs one element at a time). Max absolute
    error below ``ERF_FLOAT32_MAX_ABS_ERROR`` (a few float32 ulps of 1); NaN
    stays NaN, -0.0 stays -0.0, ``|erf(x)| <= 1``. ``out`` may be ``x``."""
    xp = backend.xp
    xc = xp.clip(x, -4.0, 4.0)
    s = xc * xc
    xp.divide(polynomial(s, _ERF_P), polynomial(s, _ERF_Q), out=out)
    out *= xc
    return xp.clip(out, -1.0, 1.0, out=out)      # the fit overshoots 1 by an ulp or two


def erf(x, out=None):
    """Replaces ``minivit.special.erf``: ``erf_rational`` for float32 on
    NumPy, accurate to float32 rounding; the exact erf otherwise."""
    if backend.name == "numpy" and x.dtype == backend.xp.float32:
        return erf_rational(x, backend.xp.empty_like(x) if out is None else out)
    return exact_erf(x, out)
