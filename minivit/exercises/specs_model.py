"""Exercises 8-9: the residual block and the whole ViT, graded with minivit's
own modules inside (the learner writes how the gradients flow between them).
As in :mod:`specs_layers`: cases, the correct backward with a ``bug`` switch,
hints."""

from __future__ import annotations

from functools import partial

import numpy as np

from minivit import backend
from minivit.exercises import library
from minivit.exercises.base import Case, Exercise, Mistake
from minivit.exercises.specs_layers import OVERWRITE_HINTS


# -- 8. the block, 9. the ViT: library modules inside --------------------------------
def _randomise(module, rng):
    """Parameters of a useful size (the initial ones are tiny): N(0, 0.3), norms
    around 1."""
    for name, p in module.named_parameters():
        if p.requires_grad:
            p.data[...] = rng.standard_normal(p.shape) * 0.3 \
                + (1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                   or name == "norm.weight" else 0.0)


def _module_case(label, module, x, dy, rng, samples):
    _randomise(module, rng)
    prefill = {n: rng.standard_normal(p.shape) for n, p in module.named_parameters()
               if p.requires_grad}
    return Case(label, {"x": x}, dy=dy, prefill=prefill, module=module, samples=samples)


def block_cases():
    from minivit.layers import Block
    rng = np.random.default_rng(108)
    cases = []
    with backend.using("numpy", dtype="float64"):
        for (B, T, D), heads in (((2, 4, 8), 2), ((1, 3, 4), 1)):
            block = Block(D, heads, 2 * D)
            cases.append(_module_case(f"x ({B}, {T}, {D}), {heads} head(s)", block,
                                      rng.standard_normal((B, T, D)),
                                      rng.standard_normal((B, T, D)), rng, samples=8))
    return cases


def block_backward(dy, layers, bug=None):
    dh = layers.norm2.backward(layers.mlp.backward(dy))
    if bug != "skip2":
        dh = dh + dy
    dx = layers.norm1.backward(layers.attn.backward(dh if bug != "attn_dy" else dy))
    if bug != "skip1":
        dx = dx + (dh if bug != "skip1_dy" else dy)
    return dx


BLOCK_SKIP = ("dh = dy + norm2.backward(mlp.backward(dy));  "
              "dx = dh + norm1.backward(attn.backward(dh))")
BLOCK = Exercise(
    name="block", title="the residual block", kind="modules", page="layers/block.md",
    aliases=("residual", "transformer_block"),
    make_cases=block_cases, reference=library.block, correct=block_backward,
    mistakes=[
        Mistake("skip2", "the second residual's skip path dropped",
                partial(block_backward, bug="skip2"), (
                    "dh misses the skip path of y = h + mlp(norm2(h)): h reaches y "
                    "directly too, so dy itself must be added.",
                    "A residual connection passes its gradient through unchanged: "
                    "d(skip) + d(branch).", BLOCK_SKIP)),
        Mistake("skip1", "the first residual's skip path dropped",
                partial(block_backward, bug="skip1"), (
                    "dx misses the skip path of h = x + attn(norm1(x)): x reaches h "
                    "directly too, so dh must be added.",
                    "A residual connection passes its gradient through unchanged.",
                    BLOCK_SKIP)),
        Mistake("attn_dy", "the attention branch fed dy instead of dh",
                partial(block_backward, bug="attn_dy"), (
                    "The attention branch gets dy, the gradient of the block's output; "
                    "it produced h, so it needs dh.",
                    "Go backward one line at a time: dh first (both uses of h), then the "
                    "line that made h.", BLOCK_SKIP)),
        Mistake("skip1_dy", "the first skip adds dy instead of dh",
                partial(block_backward, bug="skip1_dy"), (
                    "dx adds dy on the skip path of the first residual; that skip "
                    "carries h's gradient, dh.",
                    "x + attn(norm1(x)) = h: both of x's paths end at h.", BLOCK_SKIP)),
    ],
    tensor_hints={"x": ("dx: x is used twice (the skip and the attention branch); so is h.",
                        "Each use adds its gradient: dh = dy + (mlp branch), "
                        "dx = dh + (attention branch).", BLOCK_SKIP)},
    solution=("minivit.layers.block:Block.forward", "minivit.layers.block:Block.backward"),
    checks="dx and a sample of every parameter gradient of the four layers, for 1 and 2 "
           "heads",
    swap="Block")


def vit_cases():
    from minivit.vit import ViT
    rng = np.random.default_rng(109)
    cases = []
    with backend.using("numpy", dtype="float64"):
        for B, depth in ((2, 2), (3, 1)):
            model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                        depth=depth, heads=2, mlp_dim=16, seed=0)
            cases.append(_module_case(f"images ({B}, 1, 8, 8), 4x4 patches, depth {depth}",
                                      model, rng.standard_normal((B, 1, 8, 8)),
                                      rng.standard_normal((B, 3)), rng, samples=6))
    return cases


def vit_backward(dlogits, cache, bug=None):
    model, z_shape = cache
    df = model.head.backward(dlogits)
    dz = np.zeros(z_shape)
    if bug == "all_tokens":
        dz[:] = df[:, None, :]
    else:
        dz[:, 0] = df
    dz = model.norm.backward(dz)
    for block in (list(model.blocks) if bug == "order" else reversed(list(model.blocks))):
        dz = block.backward(dz)
    if bug != "no_pos":
        model.pos_embed.grad += dz.sum(axis=0, keepdims=True)
    dcls = dz[:, :1].mean(axis=0, keepdims=True) if bug == "cls_mean" \
        else dz[:, :1].sum(axis=0, keepdims=True)
    if bug == "overwrite":
        model.cls_token.grad = dcls
    else:
        model.cls_token.grad += dcls
    return model.patch_embed.backward(dz[:, 1:])


VIT_TABLE = ("df = head.backward(dlogits); dz = zeros, dz[:, 0] = df; dz = norm.backward(dz); "
             "blocks in reverse; dpos += dz summed over B; dcls += dz[:, :1] summed over B; "
             "dx = patch_embed.backward(dz[:, 1:])")
VIT = Exercise(
    name="vit", title="the whole ViT", kind="modules", page="layers/vit.md",
    aliases=("model",),
    make_cases=vit_cases, reference=library.vit, correct=vit_backward,
    mistakes=[
        Mistake("order", "the blocks run backward in forward order",
                partial(vit_backward, bug="order"), (
                    "The blocks' gradients are wrong: backward must visit the blocks in "
                    "reverse order, last block first.",
                    "Block i's backward needs the gradient of its own output, which "
                    "only block i+1's backward produces.",
                    "for block in reversed(list(model.blocks)): dz = block.backward(dz)")),
        Mistake("all_tokens", "the head's gradient sent to every token",
                partial(vit_backward, bug="all_tokens"), (
                    "Only the class token's features reach the head, so only dz[:, 0] "
                    "is non-zero; the other tokens get no gradient from the head.",
                    "f = z[:, 0] selects one token: its backward places df there and "
                    "zeros elsewhere.",
                    "dz = np.zeros(z_shape); dz[:, 0] = df")),
        Mistake("no_pos", "pos_embed's gradient missing",
                partial(vit_backward, bug="no_pos"), (
                    "dpos_embed is missing: the position embedding is added to every "
                    "image's tokens, so it gets dz summed over the batch.",
                    "Broadcasting in the forward pass (over B) is summation in the "
                    "backward pass.",
                    "model.pos_embed.grad += dz.sum(axis=0, keepdims=True)")),
        Mistake("cls_mean", "dcls averaged over the batch instead of summed",
                partial(vit_backward, bug="cls_mean"), (
                    "dcls_token is divided by the batch size: the class token is "
                    "broadcast to every image, so the images' gradients add up.",
                    "The loss already carries the 1/B of the mean.",
                    "model.cls_token.grad += dz[:, :1].sum(axis=0, keepdims=True)")),
        Mistake("overwrite", "dcls overwritten instead of accumulated",
                partial(vit_backward, bug="overwrite"),
                tuple(h.format(g="dcls_token").replace("grads[...]", "model.cls_token.grad")
                      for h in OVERWRITE_HINTS)),
    ],
    tensor_hints={
        "x": ("dx: through the patch embedding, from the patch tokens' gradient "
              "dz[:, 1:] only.", VIT_TABLE, "return model.patch_embed.backward(dz[:, 1:])"),
        "cls_token": ("dcls_token: the class token is the first token of every image.",
                      VIT_TABLE, "model.cls_token.grad += dz[:, :1].sum(axis=0, keepdims=True)"),
        "pos_embed": ("dpos_embed: added to every image's tokens.", VIT_TABLE,
                      "model.pos_embed.grad += dz.sum(axis=0, keepdims=True)"),
    },
    solution=("minivit.vit:ViT.forward", "minivit.vit:ViT.backward"),
    checks="dx, dcls_token, dpos_embed and a sample of every other parameter gradient, "
           "for depth 1 and 2",
    swap="ViT")
