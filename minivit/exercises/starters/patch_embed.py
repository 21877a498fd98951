"""Exercise 6: the backward pass of PatchEmbed: im2col forward, col2im back.

    python -m minivit.exercises check patch_embed            (grades this file)
    python -m minivit.exercises check patch_embed --hint 2   (more help when it fails)

``forward`` is given: it cuts the image into P x P patches every ``stride``
pixels (im2col), flattens each and projects it to D. Write ``col2im`` and
``backward(dy, cache, grads)``:

* ``dy`` is dL/dy, shape (B, N, D);
* return dL/dx, shape (B, C, H, W);
* ADD dL/dW (shape (D, C, P, P)) and dL/db into ``grads["W"]``, ``grads["b"]``;
* change none of your inputs (dy, the cache) in place.

The checker uses tiling patches (stride = P) and overlapping ones
(stride < P), in float64, with a random dy.
The derivation: docs/layers/patch_embed.md.
"""

import numpy as np


def patch_index(H, W, P, S):
    """Flat pixel index (row * W + col) of every pixel of every patch: (N, P*P)."""
    rows = np.arange(0, H - P + 1, S)[:, None] + np.arange(P)       # (n_rows, P)
    cols = np.arange(0, W - P + 1, S)[:, None] + np.arange(P)       # (n_cols, P)
    flat = rows[:, None, :, None] * W + cols[None, :, None, :]     # (n_rows, n_cols, P, P)
    return flat.reshape(-1, P * P)


def im2col(x, P, S):
    """(B, C, H, W) -> (B, N, C*P*P): each patch a row, flattened in (C, py, px) order."""
    B, C, H, W = x.shape
    index = patch_index(H, W, P, S)                                 # (N, P*P)
    patches = x.reshape(B, C, H * W)[:, :, index]                   # (B, C, N, P*P)
    return patches.transpose(0, 2, 1, 3).reshape(B, index.shape[0], C * P * P)


def forward(x, W, b, stride):
    """x (B, C, H, W), W (D, C, P, P), b (D,) -> y (B, N, D), cache."""
    D, P = W.shape[0], W.shape[-1]
    cols = im2col(x, P, stride)                                     # (B, N, C*P*P)
    y = cols @ W.reshape(D, -1).T + b
    cache = (x.shape, cols, W, stride)
    return y, cache


def col2im(dcols, x_shape, P, S):
    """The adjoint of im2col: (B, N, C*P*P) -> (B, C, H, W).

    Each row goes back to the pixels it was copied from; a pixel that several
    patches copied (stride < P) receives the SUM of their gradients.
    """
    raise NotImplementedError("write col2im")


def backward(dy, cache, grads):
    """Fill in the right-hand column, then write the code.

    Forward                                     Backward (given dy, (B, N, D))
      cols = im2col(x)            (B, N, CPP)     dx     = col2im(dcols)    (B, C, H, W)
      y = cols @ W_flat^T + b     (B, N, D)       dcols  = ?                (B, N, CPP)
                                                  dW    += ?  (D, CPP), reshaped to (D, C, P, P)
                                                  db    += ?  (D,)
    """
    x_shape, cols, W, stride = cache
    raise NotImplementedError("write the backward of PatchEmbed (the table above)")
