"""Exercise 5: the backward pass of multi-head self-attention.

    python -m minivit.exercises check attention            (grades this file)
    python -m minivit.exercises check attention --hint 2   (more help when it fails)

``forward`` is given (one fused qkv projection, as minivit and timm). Write
``backward(dy, cache, grads)``:

* ``dy`` is dL/dy, shape (B, T, D);
* return dL/dx, shape (B, T, D);
* ADD the parameter gradients into ``grads["Wqkv"]``, ``grads["bqkv"]``,
  ``grads["Wproj"]``, ``grads["bproj"]`` (accumulate with +=);
* change none of your inputs (dy, the cache) in place.

The two projections are Linear layers (exercise 1) and the softmax is
exercise 4: reuse what you wrote there. The checker compares every gradient
with finite differences in float64, for a random dy and several shapes.
The derivation: docs/layers/attention.md.
"""

import numpy as np


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def split_heads(t, heads):
    """(B, T, D) -> (B, H, T, D/H)"""
    B, T, D = t.shape
    return t.reshape(B, T, heads, D // heads).transpose(0, 2, 1, 3)


def merge_heads(t):
    """(B, H, T, hd) -> (B, T, H*hd): the inverse of split_heads"""
    B, H, T, hd = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def forward(x, Wqkv, bqkv, Wproj, bproj, heads):
    """x (B, T, D), Wqkv (3D, D), bqkv (3D,), Wproj (D, D), bproj (D,) -> y (B, T, D)."""
    D = x.shape[-1]
    scale = 1.0 / np.sqrt(D // heads)
    qkv = x @ Wqkv.T + bqkv                                   # (B, T, 3D): [q | k | v]
    q, k, v = (split_heads(t, heads) for t in np.split(qkv, 3, axis=-1))   # (B, H, T, hd)
    s = q @ k.transpose(0, 1, 3, 2) * scale                   # (B, H, T, T)
    a = softmax(s)
    o = a @ v                                                 # (B, H, T, hd)
    m = merge_heads(o)                                        # (B, T, D)
    y = m @ Wproj.T + bproj
    cache = (x, q, k, v, a, m, Wqkv, Wproj, heads, scale)
    return y, cache


def backward(dy, cache, grads):
    """Fill in the right-hand column (bottom to top), then write the code.

    Forward                                    Backward (given dy)
      qkv = x @ Wqkv^T + bqkv    (B, T, 3D)      dx = ?,  dWqkv += ?,  dbqkv += ?
      q, k, v = split(qkv)       (B, H, T, hd)   dqkv = concatenate of merge_heads(dq, dk, dv)
      s = q @ k^T * scale        (B, H, T, T)    dq = ?,  dk = ?
      a = softmax(s)                             ds = ?
      o = a @ v                  (B, H, T, hd)   da = ?,  dv = ?
      m = merge_heads(o)         (B, T, D)       do = split_heads(dm)
      y = m @ Wproj^T + bproj                    dm = ?,  dWproj += ?,  dbproj += ?
    """
    x, q, k, v, a, m, Wqkv, Wproj, heads, scale = cache
    raise NotImplementedError("write the backward of attention (the table above)")
