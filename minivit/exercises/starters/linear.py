"""Exercise 1: the backward pass of Linear.

    python -m minivit.exercises check linear            (grades this file)
    python -m minivit.exercises check linear --hint 2   (more help when it fails)

``forward`` is given. Write ``backward(dy, cache, grads)``:

* ``dy`` is dL/dy, the shape of y;
* return dL/dx, the shape of x;
* ADD dL/dW and dL/db into ``grads["W"]`` and ``grads["b"]``: they may already
  hold gradients from another use of the same weights, so accumulate (+=),
  never overwrite;
* change none of your inputs (dy, the cache) in place.

The checker compares your gradients with finite differences in float64, for a
random (mixed-sign) dy and several shapes, and names any that disagree.
The derivation: docs/layers/linear.md.
"""

import numpy as np


def forward(x, W, b):
    """x (..., in), W (out, in), b (out,) -> y (..., out), cache."""
    y = x @ W.T + b
    cache = (x, W)
    return y, cache


def backward(dy, cache, grads):
    """Fill in the right-hand column, then write the code.

    Forward                        Backward (given dy, shape (..., out))
      y = x @ W.T + b                dx  = ?      (..., in)
                                     dW += ?      (out, in): one term per row of x
                                     db += ?      (out,): broadcast forward = sum backward

    Tip: flatten the leading dimensions first, x.reshape(-1, n_in) and
    dy.reshape(-1, n_out), so that every row is one example.
    """
    x, W = cache
    raise NotImplementedError("write the backward of Linear (the table above)")
