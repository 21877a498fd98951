"""Exercise 8: the backward pass of a pre-norm transformer block (the residuals).

    python -m minivit.exercises check block            (grades this file)
    python -m minivit.exercises check block --hint 2   (more help when it fails)

``forward`` is given. ``layers`` holds four layers, ``norm1``, ``attn``,
``norm2``, ``mlp``, each with ``forward(x)`` and ``backward(dout)``:
``backward`` takes the gradient of that layer's output, returns the gradient
of its input and adds its parameters' gradients to their ``.grad`` itself.
Write ``backward(dy, cache)``: return dL/dx, shape (B, T, D), calling each
layer's backward once, in the right order; change no input in place.

The checker compares dx and every parameter gradient of the four layers with
finite differences in float64 (a sample of the elements of each).
The derivation: docs/layers/block.md.
"""

import numpy as np


def forward(x, layers):
    """x (B, T, D) -> y (B, T, D), cache."""
    h = x + layers.attn.forward(layers.norm1.forward(x))     # h = x + attn(norm1(x))
    y = h + layers.mlp.forward(layers.norm2.forward(h))      # y = h + mlp(norm2(h))
    cache = layers
    return y, cache


def backward(dy, cache):
    """Fill in the right-hand column (bottom to top), then write the code.

    Forward                               Backward (given dy)
      h = x + attn(norm1(x))                dx = ?
      y = h + mlp(norm2(h))                 dh = ?

    A variable used twice receives the sum of the gradients from both uses.
    """
    layers = cache
    raise NotImplementedError("write the backward of the block (the table above)")
