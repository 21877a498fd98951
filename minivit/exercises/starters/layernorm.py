"""Exercise 2: the backward pass of LayerNorm (over the last axis).

    python -m minivit.exercises check layernorm            (grades this file)
    python -m minivit.exercises check layernorm --hint 2   (more help when it fails)

``forward`` is given. Write ``backward(dy, cache, grads)``:

* ``dy`` is dL/dy, the shape of y (and of x);
* return dL/dx;
* ADD dL/dgamma and dL/dbeta into ``grads["gamma"]`` and ``grads["beta"]``
  (accumulate with +=, never overwrite);
* change none of your inputs (dy, the cache) in place.

The checker compares your gradients with finite differences in float64, for a
random (mixed-sign) dy and several shapes, and names any that disagree.
The derivation: docs/layers/layernorm.md.
"""

import numpy as np


def forward(x, gamma, beta, eps=1e-6):
    """x (..., D), gamma (D,), beta (D,) -> y (..., D), cache."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * rstd
    y = xhat * gamma + beta
    cache = (xhat, rstd, gamma)
    return y, cache


def backward(dy, cache, grads):
    """Fill in the right-hand column, then write the code.

    Forward (per row of D values)      Backward (given dy, shape (..., D))
      mu   = mean(x)                     dbeta  += ?      (D,)   summed over all rows
      var  = mean((x - mu)^2)            dgamma += ?      (D,)
      rstd = 1 / sqrt(var + eps)         dxhat   = ?      (..., D)
      xhat = (x - mu) * rstd             dx      = ?      (..., D)
      y    = xhat * gamma + beta

    x reaches xhat along three paths: directly, through mu and through var.
    dx is the sum of all three (each one is a mean over the row).
    """
    xhat, rstd, gamma = cache
    raise NotImplementedError("write the backward of LayerNorm (the table above)")
