"""Exercise 3: the backward pass of GELU (the tanh approximation).

    python -m minivit.exercises check gelu            (grades this file)
    python -m minivit.exercises check gelu --hint 2   (more help when it fails)

``forward`` is given. Write ``backward(dy, cache)``: ``dy`` is dL/dy; return
dL/dx (elementwise: dx = dy * dy/dx); change no input in place.

The checker compares your gradient with finite differences in float64, for a
random (mixed-sign) dy and several shapes.
The derivation: docs/layers/gelu.md.
"""

import numpy as np

SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
COEFF = 0.044715


def forward(x):
    """x (...) -> y (...), cache."""
    u = SQRT_2_OVER_PI * (x + COEFF * x ** 3)
    t = np.tanh(u)
    y = 0.5 * x * (1.0 + t)
    cache = (x, t)
    return y, cache


def backward(dy, cache):
    """Fill in the right-hand column, then write the code.

    Forward                                  Backward (given dy)
      u = sqrt(2/pi) * (x + 0.044715 x^3)      du/dx = ?
      t = tanh(u)                              dt/du = ?
      y = 0.5 x (1 + t)                        dy/dx = ?     (x appears twice: product rule)
                                               dx    = dy * dy/dx
    """
    x, t = cache
    raise NotImplementedError("write the backward of GELU (the table above)")
