"""Exercise 9: the backward pass of the whole Vision Transformer.

    python -m minivit.exercises check vit            (grades this file)
    python -m minivit.exercises check vit --hint 2   (more help when it fails)

``forward`` is given: patches -> tokens, a class token in front, the position
embedding added, the blocks, the final norm, the class token's features to
the head. ``model`` is a minivit ViT: its layers (``patch_embed``, each of
``blocks``, ``norm``, ``head``) have ``forward``/``backward`` (backward returns
the gradient of the layer's input and adds its parameters' gradients itself).
Write ``backward(dlogits, cache)``:

* return dL/dx, the gradient of the images, shape (B, C, H, W);
* ADD the gradients of the two parameters the forward uses directly into
  ``model.cls_token.grad`` (1, 1, D) and ``model.pos_embed.grad`` (1, T, D);
* change no input in place.

The checker compares dx and every parameter gradient of the model with
finite differences in float64 (a sample of the elements of each).
The derivation: docs/layers/vit.md.
"""

import numpy as np


def forward(x, model):
    """Images x (B, C, H, W) -> logits (B, K), cache."""
    B = x.shape[0]
    t = model.patch_embed.forward(x)                          # (B, N, D)
    cls = np.broadcast_to(model.cls_token.data, (B, 1, t.shape[-1]))
    z = np.concatenate([cls, t], axis=1) + model.pos_embed.data   # (B, T, D), T = N + 1
    for block in model.blocks:
        z = block.forward(z)
    z = model.norm.forward(z)
    logits = model.head.forward(z[:, 0])                      # the class token's features
    cache = (model, z.shape)
    return logits, cache


def backward(dlogits, cache):
    """Fill in the right-hand column (bottom to top), then write the code.

    Forward                                   Backward (given dlogits)
      t = patch_embed(x)         (B, N, D)      dx         = ?
      z = concat(cls_token, t)   (B, T, D)      dcls_token += ?    (1, 1, D)
      z = z + pos_embed                         dpos_embed += ?    (1, T, D)
      z = blocks(z)                             dz         = ?     (in which order?)
      z = norm(z)                               dz         = ?
      f = z[:, 0]                (B, D)         dz         = ?     (B, T, D)
      logits = head(f)           (B, K)         df         = ?
    """
    model, z_shape = cache
    raise NotImplementedError("write the backward of the ViT (the table above)")
