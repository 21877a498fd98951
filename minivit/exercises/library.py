"""The library's own layers behind each exercise's calling convention.

These adapters let the grader run minivit's real ``backward`` on a case (the
reference its mistake hints are measured against, and the proof, in the
tests, that the grader passes the library's own code). They build float64
modules around the case's arrays and must run inside
``backend.using("numpy", dtype="float64")``.
"""

from __future__ import annotations

from types import SimpleNamespace

from minivit.layers import GELU, LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbed
from minivit.loss import cross_entropy as library_cross_entropy


def _module_pair(build, set_params, grad_names):
    """forward/backward functions ("params" kind) around a module."""

    def forward(x, *args):
        module = build(x, *args)
        set_params(module, *args)
        module.zero_grad()
        return module.forward(x), module

    def backward(dy, module, grads):
        module.zero_grad()
        dx = module.backward(dy)
        for key, param in zip(grad_names, (p for _, p in module.named_parameters())):
            grads[key] += param.grad
        return dx

    return SimpleNamespace(forward=forward, backward=backward)

def _set(module, pairs):
    for param, value in pairs:
        param.data = value

linear = _module_pair(
    lambda x, W, b: Linear(W.shape[1], W.shape[0]),
    lambda m, W, b: _set(m, ((m.weight, W), (m.bias, b))), ("W", "b"))

layernorm = _module_pair(
    lambda x, gamma, beta, eps=1e-6: LayerNorm(gamma.shape[0], eps=eps),
    lambda m, gamma, beta, eps=1e-6: _set(m, ((m.weight, gamma), (m.bias, beta))),
    ("gamma", "beta"))

attention = _module_pair(
    lambda x, Wqkv, bqkv, Wproj, bproj, heads: MultiHeadSelfAttention(x.shape[-1], heads),
    lambda m, Wqkv, bqkv, Wproj, bproj, heads: _set(
        m, ((m.qkv.weight, Wqkv), (m.qkv.bias, bqkv), (m.proj.weight, Wproj),
            (m.proj.bias, bproj))),
    ("Wqkv", "bqkv", "Wproj", "bproj"))

patch_embed = _module_pair(
    lambda x, W, b, stride: PatchEmbed(x.shape[-1], W.shape[-1], W.shape[1], W.shape[0],
                                       stride=stride),
    lambda m, W, b, stride: _set(m, ((m.proj.weight, W), (m.proj.bias, b))), ("W", "b"))

def _gelu_forward(x):
    module = GELU("tanh")
    return module.forward(x), module

gelu = SimpleNamespace(forward=_gelu_forward,
                       backward=lambda dy, module: module.backward(dy))

def _softmax_forward(s):
    from minivit.layers.attention import softmax
    a = softmax(s.copy())
    return a, a

def _softmax_backward(da, a):
    """The softmax line of attention's backward: ds = a * (da - sum(da * a))."""
    return a * (da - (da * a).sum(axis=-1, keepdims=True))

softmax = SimpleNamespace(forward=_softmax_forward, backward=_softmax_backward)

def _ce_forward(logits, labels, label_smoothing=0.0):
    loss, dlogits = library_cross_entropy(logits, labels, label_smoothing)
    return loss, dlogits

cross_entropy = SimpleNamespace(forward=_ce_forward,
                                backward=lambda dloss, dlogits: dloss * dlogits)

def _block_forward(x, block):
    return block.forward(x), block

block = SimpleNamespace(forward=_block_forward,
                        backward=lambda dy, block: block.backward(dy))

def _vit_forward(x, model):
    return model.forward(x), model

vit = SimpleNamespace(forward=_vit_forward, backward=lambda dy, model: model.backward(dy))

__all__ = ["attention", "block", "cross_entropy", "gelu", "layernorm", "linear",
           "patch_embed", "softmax", "vit"]
