"""Exercises 5-7: attention, PatchEmbed (col2im), cross-entropy. As in
:mod:`specs_layers`: cases, the correct backward with a ``bug`` switch, hints."""

from __future__ import annotations

from functools import partial

import numpy as np

from minivit.exercises import library
from minivit.exercises.base import Case, Exercise, Mistake
from minivit.exercises.specs_layers import OVERWRITE_HINTS, _prefill
from minivit.exercises.starters.attention import merge_heads, split_heads
from minivit.exercises.starters.patch_embed import patch_index


# -- 5. attention ----------------------------------------------------------------------
def attention_cases():
    rng = np.random.default_rng(105)
    cases = []
    for (B, T, D), heads in (((2, 4, 6), 2), ((1, 5, 8), 4), ((3, 3, 4), 1)):
        params = {"Wqkv": rng.standard_normal((3 * D, D)) * 0.5,
                  "bqkv": rng.standard_normal(3 * D) * 0.5,
                  "Wproj": rng.standard_normal((D, D)) * 0.5,
                  "bproj": rng.standard_normal(D) * 0.5}
        cases.append(Case(f"x ({B}, {T}, {D}), {heads} head(s)",
                          {"x": rng.standard_normal((B, T, D))}, params, consts=(heads,),
                          dy=rng.standard_normal((B, T, D)), prefill=_prefill(rng, params)))
    return cases


def attention_backward(dy, cache, grads, bug=None):
    x, q, k, v, a, m, Wqkv, Wproj, heads, scale = cache
    D = x.shape[-1]
    dy2, m2, x2 = dy.reshape(-1, D), m.reshape(-1, D), x.reshape(-1, D)
    grads["Wproj"] += dy2.T @ m2
    grads["bproj"] += dy2.sum(axis=0)
    do = split_heads(dy @ Wproj, heads)                           # (B, H, T, hd)
    da = do @ v.transpose(0, 1, 3, 2)
    dv = (a.transpose(0, 1, 3, 2) if bug != "dv" else a) @ do
    ds = a * (da - (da * a).sum(axis=-2 if bug == "softmax_axis" else -1, keepdims=True))
    if bug != "scale":
        ds = ds * scale
    dq = ds @ k
    dk = (ds.transpose(0, 1, 3, 2) if bug != "dk" else ds) @ q
    dqkv = np.concatenate([merge_heads(t) for t in (dq, dk, dv)], axis=-1).reshape(-1, 3 * D)
    if bug == "overwrite":
        grads["Wqkv"] = dqkv.T @ x2
    else:
        grads["Wqkv"] += dqkv.T @ x2
    grads["bqkv"] += dqkv.sum(axis=0)
    return (dqkv @ Wqkv).reshape(x.shape)


def attention_describe(name, wrong, case):
    """Wqkv, bqkv: which of the q, k, v parts are wrong."""
    if name not in ("Wqkv", "bqkv"):
        return None
    D = wrong.shape[0] // 3
    parts = [f"{p} (rows {i * D}-{(i + 1) * D - 1})" for i, p in enumerate("qkv")
             if wrong[i * D:(i + 1) * D].any()]
    return f"in the {' and '.join(parts)} part{'s' if len(parts) > 1 else ''}"


ATTENTION_FORMULAS = ("dq = ds @ k * scale,  dk = ds^T @ q * scale,  ds = a * (da - "
                      "sum(da * a, axis=-1)),  da = do @ v^T,  dv = a^T @ do")
ATTENTION = Exercise(
    name="attention", title="attention", kind="params", page="layers/attention.md",
    make_cases=attention_cases, reference=library.attention, correct=attention_backward,
    mistakes=[
        Mistake("scale", "the scale forgotten in the backward",
                partial(attention_backward, bug="scale"), (
                    "The q and k parts are off by one constant factor: the scale "
                    "1/sqrt(hd) of s = q k^T * scale is forgotten on the way back.",
                    "ds is the gradient of the scaled scores; q and k get it through "
                    "the product, times scale.",
                    ATTENTION_FORMULAS)),
        Mistake("dk", "dk without the transpose of ds",
                partial(attention_backward, bug="dk"), (
                    "The k part is wrong: dk needs ds transposed (a transpose is "
                    "missing; the shapes match because ds is square).",
                    "s_ij = q_i . k_j * scale: key j collects sum over queries i of "
                    "ds_ij q_i, i.e. ds^T @ q.",
                    ATTENTION_FORMULAS)),
        Mistake("dv", "dv without the transpose of a",
                partial(attention_backward, bug="dv"), (
                    "The v part is wrong: dv needs the attention matrix transposed.",
                    "o_i = sum_j a_ij v_j: value j collects sum over queries i of a_ij "
                    "do_i, i.e. a^T @ do.",
                    ATTENTION_FORMULAS)),
        Mistake("softmax_axis", "the softmax's row sum over the wrong axis",
                partial(attention_backward, bug="softmax_axis"), (
                    "The q and k parts are wrong: the row sum of the softmax backward "
                    "runs over the wrong axis (see the softmax exercise).",
                    "Each row of a (one query) is a softmax over the keys: the last axis.",
                    "ds = a * (da - (da * a).sum(axis=-1, keepdims=True))")),
        Mistake("overwrite", "dWqkv overwritten instead of accumulated",
                partial(attention_backward, bug="overwrite"),
                tuple(h.format(g="dWqkv") for h in OVERWRITE_HINTS)),
    ],
    tensor_hints={
        "x": ("dx comes back through qkv = x Wqkv^T + b: dx = dqkv @ Wqkv, with dqkv "
              "the q, k, v gradients side by side.", ATTENTION_FORMULAS,
              "dqkv = concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], -1)"),
        "Wqkv": ("dWqkv: the Linear rule on dqkv and x.", ATTENTION_FORMULAS,
                 "grads['Wqkv'] += dqkv_rows.T @ x_rows"),
        "bqkv": ("dbqkv: dqkv summed over all rows.", ATTENTION_FORMULAS,
                 "grads['bqkv'] += dqkv_rows.sum(axis=0)"),
        "Wproj": ("dWproj: the Linear rule on dy and m = merge_heads(o).",
                  "dWproj = dy_rows^T @ m_rows", "grads['Wproj'] += dy_rows.T @ m_rows"),
        "bproj": ("dbproj: dy summed over all rows.", "B and T are both rows here.",
                  "grads['bproj'] += dy.reshape(-1, D).sum(axis=0)"),
    },
    solution=("minivit.layers.attention:MultiHeadSelfAttention.forward",
              "minivit.layers.attention:MultiHeadSelfAttention.backward"),
    checks="dx and the four parameter gradients for 1, 2 and 4 heads, accumulated onto "
           "gradients already present",
    swap="MultiHeadSelfAttention", describe=attention_describe)


# -- 6. PatchEmbed ----------------------------------------------------------------------
def patch_embed_cases():
    rng = np.random.default_rng(106)
    cases = []
    for (B, C, S_img), (D, P, S) in (((2, 1, 4), (3, 2, 2)), ((1, 2, 5), (3, 3, 2)),
                                     ((2, 3, 6), (4, 3, 3))):
        params = {"W": rng.standard_normal((D, C, P, P)), "b": rng.standard_normal(D)}
        N = ((S_img - P) // S + 1) ** 2
        cases.append(Case(f"x ({B}, {C}, {S_img}, {S_img}), {P}x{P} patches, stride {S}"
                          + (" (overlapping)" if S < P else ""),
                          {"x": rng.standard_normal((B, C, S_img, S_img))}, params,
                          consts=(S,), dy=rng.standard_normal((B, N, D)),
                          prefill=_prefill(rng, params)))
    return cases


def col2im(dcols, x_shape, P, S, bug=None):
    B, C, H, W = x_shape
    index = patch_index(H, W, P, S)                                 # (N, P*P)
    if bug == "order":
        per_pixel = dcols.reshape(B, -1, P * P, C).transpose(0, 3, 1, 2)
    else:
        per_pixel = dcols.reshape(B, -1, C, P * P).transpose(0, 2, 1, 3)   # (B, C, N, PP)
    dx = np.zeros((B, C, H * W))
    if bug == "assign":
        dx[:, :, index] = per_pixel
    else:
        np.add.at(dx, (slice(None), slice(None), index), per_pixel)
    return dx.reshape(x_shape)


def patch_embed_backward(dy, cache, grads, bug=None):
    x_shape, cols, W, stride = cache
    D, P = W.shape[0], W.shape[-1]
    dy2, cols2 = dy.reshape(-1, D), cols.reshape(-1, cols.shape[-1])
    dW = (dy2.T @ cols2).reshape(W.shape)
    if bug == "overwrite":
        grads["W"] = dW
    else:
        grads["W"] += dW
    grads["b"] += dy2.sum(axis=0)
    dcols = dy @ W.reshape(D, -1)
    return col2im(dcols, x_shape, P, stride, bug=bug)


def patch_embed_describe(name, wrong, case):
    if name != "x":
        return None
    (x,) = case.inputs.values()
    W, (S,) = case.params["W"], case.consts
    B, C, H, Wd = x.shape
    count = np.zeros(H * Wd)
    np.add.at(count, patch_index(H, Wd, W.shape[-1], S), 1)
    shared = np.broadcast_to((count > 1).reshape(H, Wd), wrong.shape)
    if shared.any() and np.array_equal(wrong, shared):
        return "exactly at the pixels that more than one patch covers"
    return None


PATCH_EMBED = Exercise(
    name="patch_embed", title="PatchEmbed / col2im", kind="params",
    page="layers/patch_embed.md", aliases=("patchembed", "col2im", "im2col"),
    make_cases=patch_embed_cases, reference=library.patch_embed,
    correct=patch_embed_backward,
    mistakes=[
        Mistake("assign", "col2im assigns where it must add",
                partial(patch_embed_backward, bug="assign"), (
                    "dx is wrong only where patches overlap: a pixel copied into several "
                    "patches must receive the sum of their gradients, and col2im keeps "
                    "only one.",
                    "With fancy indexing, dx[..., index] = values writes each pixel once "
                    "(the last write wins), even when the index repeats.",
                    "np.add.at(dx, (slice(None), slice(None), index), per_pixel) adds "
                    "every repeat")),
        Mistake("order", "col2im unflattens in the wrong order",
                partial(patch_embed_backward, bug="order"), (
                    "dx is scrambled across channels: col2im must undo the flatten "
                    "order of im2col, (C, py, px).",
                    "im2col builds each row from patches (B, C, N, P*P) transposed to "
                    "(B, N, C, P*P): reshape dcols to (B, N, C, P*P) and transpose back.",
                    "per_pixel = dcols.reshape(B, N, C, P * P).transpose(0, 2, 1, 3)")),
        Mistake("overwrite", "dW overwritten instead of accumulated",
                partial(patch_embed_backward, bug="overwrite"),
                tuple(h.format(g="dW") for h in OVERWRITE_HINTS)),
    ],
    tensor_hints={
        "x": ("dx = col2im(dcols), dcols = dy @ W_flat: every pixel gets the gradient of "
              "each patch row it was copied into.",
              "col2im is the adjoint of im2col: undo the reshape/transpose, then scatter "
              "back with addition.",
              "np.add.at(dx, (slice(None), slice(None), index), per_pixel)"),
        "W": ("dW: the Linear rule on the patch rows, then reshaped to (D, C, P, P).",
              "dW_flat = dy_rows^T @ cols_rows, shape (D, C*P*P).",
              "grads['W'] += (dy_rows.T @ cols_rows).reshape(W.shape)"),
        "b": ("db: dy summed over the batch and the patches.", "(B*N, D) rows.",
              "grads['b'] += dy.reshape(-1, D).sum(axis=0)"),
    },
    solution=("minivit.layers.patch_embed:PatchEmbed.im2col",
              "minivit.layers.patch_embed:PatchEmbed.col2im",
              "minivit.layers.patch_embed:PatchEmbed.forward",
              "minivit.layers.patch_embed:PatchEmbed.backward"),
    checks="dx, dW, db for tiling patches with 1 and 3 channels and overlapping "
           "patches (stride < P), accumulated onto gradients already present",
    swap="PatchEmbed", describe=patch_embed_describe)


# -- 7. cross-entropy ------------------------------------------------------------------
def cross_entropy_cases():
    rng = np.random.default_rng(107)
    cases = []
    for B, K, smoothing, dloss in ((4, 5, 0.0, 0.7), (3, 3, 0.1, -1.3), (1, 7, 0.0, 2.0)):
        labels = rng.integers(0, K, size=B)
        cases.append(Case(f"logits ({B}, {K}), label smoothing {smoothing}, dloss {dloss}",
                          {"logits": rng.standard_normal((B, K)) * 2},
                          consts=(labels, smoothing), dy=dloss))
    return cases


def cross_entropy_backward(dloss, cache, bug=None):
    p, q = cache
    if bug == "onehot":
        q = (q == q.max(axis=1, keepdims=True)).astype(p.dtype)
    d = (q - p) if bug == "sign" else (p - q)
    if bug != "no_mean":
        d = d / len(p)
    return d if bug == "no_dloss" else dloss * d


CE_FORMULA = "dlogits = dloss * (p - q) / B"
CROSS_ENTROPY = Exercise(
    name="cross_entropy", title="cross-entropy", kind="plain",
    page="layers/cross_entropy.md", aliases=("cross-entropy", "crossentropy", "ce", "loss"),
    make_cases=cross_entropy_cases, reference=library.cross_entropy,
    correct=cross_entropy_backward,
    mistakes=[
        Mistake("no_mean", "the 1/B of the mean is missing",
                partial(cross_entropy_backward, bug="no_mean"), (
                    "dlogits is B times too large: the loss is a mean over the batch, so "
                    "each row's gradient carries 1/B.",
                    "loss = (1/B) sum_rows (...): the factor stays in the derivative.",
                    CE_FORMULA)),
        Mistake("sign", "the sign flipped",
                partial(cross_entropy_backward, bug="sign"), (
                    "dlogits has the wrong sign: raising the right class's logit must "
                    "lower the loss.",
                    "d(-log p_y)/dz_k = p_k - [k = y].", CE_FORMULA)),
        Mistake("onehot", "label smoothing ignored in the backward",
                partial(cross_entropy_backward, bug="onehot"), (
                    "dlogits is right without label smoothing and wrong with it: the "
                    "target is q, not the one-hot label.",
                    "With smoothing e: q = (1 - e) onehot + e / K (the cache holds q).",
                    CE_FORMULA)),
        Mistake("no_dloss", "dloss not multiplied in",
                partial(cross_entropy_backward, bug="no_dloss"), (
                    "dlogits ignores dloss: when the loss is scaled (or summed with "
                    "another), its gradient is scaled too.",
                    "Chain rule: dL/dz = dL/dloss * dloss/dz.", CE_FORMULA)),
    ],
    tensor_hints={"logits": ("dlogits: the softmax and the log cancel to p - q.",
                             "Per row: d(-sum_k q_k log p_k)/dz = p - q; the mean adds 1/B.",
                             CE_FORMULA)},
    solution=("minivit.loss:cross_entropy",),
    checks="dlogits for batches of 1, 3 and 4 rows, label smoothing 0 and 0.1, and "
           "dloss other than 1 (one negative)")
