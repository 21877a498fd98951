"""Helpers shared by the tests."""

import numpy as np

from minivit import backend
from minivit.kernels import fused
from minivit.module import Module

# The kernel modes the mode-parametrised tests run: the default ("fast") and
# the reference; where numba is installed "fast" runs the fused kernels, so
# the NumPy kernels ("numpy") are run as well.
KERNEL_MODES = ("fast", "reference") + (("numpy",) if fused.available() else ())


def randn(*shape, seed=0, scale=1.0):
    """Standard-normal array on the active backend, in its default dtype."""
    draws = np.random.default_rng(seed).standard_normal(shape) * scale
    return backend.to_device(draws, backend.default_dtype())


def randomize_parameters(module, scale=0.5, seed=0):
    """Replace every trainable parameter with N(0, scale^2) draws.

    timm's initialisation (weights ~0.02, LayerNorm gamma = 1, beta = 0)
    leaves GELU and softmax in their near-linear regime and makes many
    gradients tiny, which lets some wrong backward passes slip through a
    check. Random O(1) parameters exercise every path of the derivation.
    LayerNorm gains stay around 1 so activations keep their scale.
    """
    rng = np.random.default_rng(seed)
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        draws = rng.standard_normal(p.shape) * scale
        is_layernorm_gain = name.endswith(("norm.weight", "norm1.weight", "norm2.weight")) \
            or (name == "weight" and p.data.ndim == 1)          # a LayerNorm on its own
        if is_layernorm_gain:
            draws += 1.0
        p.data[...] = backend.to_device(draws, p.data.dtype)


def halves_dataset(n, seed):
    """(x float32 (n, 1, 8, 8), y int64 (n,)): class 0 bright on the left,
    class 1 bright on the right, Gaussian noise on top."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(0.0, 0.5, size=(n, 1, 8, 8))
    x[y == 0, :, :, :4] += 1.0
    x[y == 1, :, :, 4:] += 1.0
    return x.astype(np.float32), y.astype(np.int64)


class FirstTokens(Module):
    """A layer run with ``num_queries``: y (B, Q, D) from x (B, T, D)."""

    def __init__(self, layer, num_queries):
        super().__init__()
        self.layer, self.num_queries = layer, num_queries

    def forward(self, x):
        return self.layer.forward(x, num_queries=self.num_queries)

    def backward(self, dout):
        return self.layer.backward(dout)
