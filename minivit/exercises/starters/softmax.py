"""Exercise 4: the backward pass of softmax (over the last axis).

    python -m minivit.exercises check softmax            (grades this file)
    python -m minivit.exercises check softmax --hint 2   (more help when it fails)

``forward`` is given. Write ``backward(da, cache)``: ``da`` is dL/da, the shape
of a; return dL/ds (the shape of s); change no input in place.

The checker compares your gradient with finite differences in float64, for a
random (mixed-sign) da and several shapes (square score matrices among them,
where a sum over the wrong axis still has the right shape).
The derivation: docs/layers/attention.md (the softmax section).
"""

import numpy as np


def forward(s):
    """Scores s (..., n) -> probabilities a (..., n), each row summing to 1."""
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    a = e / e.sum(axis=-1, keepdims=True)
    cache = (a,)
    return a, cache


def backward(da, cache):
    """Fill in the right-hand column, then write the code.

    Forward (per row)                    Backward (given da)
      a_i = exp(s_i) / sum_j exp(s_j)      J_ij = d a_i / d s_j = ?     (never build J itself)
                                           ds_j = sum_i da_i J_ij   = ?

    The Jacobian-vector product collapses to one line with one row sum.
    """
    (a,) = cache
    raise NotImplementedError("write the backward of softmax (the table above)")
