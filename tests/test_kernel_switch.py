"""The switch MINIVIT_KERNELS: the fast kernels (default) or the layers'
reference code, end to end; the whole model checks and trains on both."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import KERNEL_MODES, randn, randomize_parameters

from minivit import backend, kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the switch -----------------------------------------------------------------
def test_the_switch_defaults_to_fast_and_flips_back():
    assert kernels.MODES == ("fast", "fused", "numpy", "reference")
    assert kernels.mode() == "fast" and kernels.enabled()
    with kernels.using("reference"):
        assert kernels.mode() == "reference" and not kernels.enabled()
        with kernels.using("fast"):
            assert kernels.enabled()
        assert not kernels.enabled()
    assert kernels.enabled()
    with pytest.raises(ValueError, match="one of fast, fused, numpy, reference"):
        kernels.use("quick")
    assert kernels.enabled()


def test_a_bad_environment_value_names_the_valid_ones():
    env = dict(os.environ, MINIVIT_KERNELS="slow", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", "import minivit"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "MINIVIT_KERNELS must be one of fast, fused, numpy, reference" in proc.stderr
    assert "'slow'" in proc.stderr
    env["MINIVIT_KERNELS"] = " Reference "
    proc = subprocess.run([sys.executable, "-c",
                           "from minivit import kernels; print(kernels.mode())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reference"


HIDE_NUMBA = "import sys; sys.modules['numba'] = None\n"   # import numba then fails


def test_without_numba_fast_runs_the_numpy_kernels_and_fused_names_the_extra():
    """In a process where numba cannot be imported: the default runs the
    NumPy kernels and says nothing; MINIVIT_KERNELS=fused is an error naming
    the extra to install."""
    step = ("import numpy as np, warnings\nwarnings.simplefilter('error')\n"
            "from minivit import kernels\nfrom minivit.kernels import fused\n"
            "from minivit.layers import LayerNorm\n"
            "x = np.ones((3, 4), np.float32)\n"
            "y = LayerNorm(4).forward(x)\n"
            "print(kernels.mode(), fused.available(), y.dtype)\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MINIVIT_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", HIDE_NUMBA + step], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["fast", "False", "float32"]
    assert proc.stderr == ""
    env["MINIVIT_KERNELS"] = "fused"
    proc = subprocess.run([sys.executable, "-c", HIDE_NUMBA + "import minivit"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'pip install -e ".[fast]"' in proc.stderr and "numba" in proc.stderr


def test_reference_mode_runs_none_of_the_kernels(monkeypatch):
    """With the switch on reference, a whole training step calls nothing in
    minivit/kernels/ (each kernel module's public functions replaced by traps)."""
    from minivit.loss import cross_entropy
    from minivit.vit import ViT

    def trap(*args, **kwargs):
        raise AssertionError("a fast kernel ran in reference mode")

    for module in (kernels.attention, kernels.gelu, kernels.layernorm, kernels.linear,
                   kernels.reductions, kernels.dropout, kernels.loss, kernels.adamw):
        for name in ("forward", "backward", "sum_rows", "sum_last", "mean_last", "dot_last",
                     "cross_entropy", "update"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, trap)
    with backend.using("numpy", dtype="float32"), kernels.using("reference"):
        for gelu in ("tanh", "exact"):
            if gelu == "exact":
                pytest.importorskip("scipy")
            model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                        depth=2, heads=2, mlp_dim=16, gelu=gelu, pool="cls", seed=0)
            loss, dlogits = cross_entropy(model.forward(randn(3, 1, 8, 8)), np.arange(3))
            model.backward(dlogits)
            assert np.isfinite(loss)
    with kernels.using("fast"), pytest.raises(AssertionError, match="fast kernel ran"):
        model.forward(randn(3, 1, 8, 8))


# -- whole model: gradient check and a short training, in both modes -------------
@pytest.mark.parametrize("mode", KERNEL_MODES)
def test_whole_model_gradcheck_in_both_modes(mode):
    from minivit.gradcheck import assert_gradients_ok, check_module
    from minivit.vit import ViT
    with backend.using("numpy", dtype="float64"), kernels.using(mode):
        model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                    heads=2, mlp_dim=12, pool="cls", seed=0)
        randomize_parameters(model, scale=0.4)
        x = np.random.default_rng(0).standard_normal((3, 2, 8, 8))
        assert_gradients_ok(check_module(model, x, samples=20))
        assert_gradients_ok(check_module(model, x, mode="direction", seed=1))


def _short_training(mode, steps=12):
    from minivit.loss import cross_entropy
    from minivit.optim import AdamW, param_groups_weight_decay
    from minivit.parallel.replicas import Replicas
    from minivit.vit import ViT
    with backend.using("numpy", dtype="float32"), kernels.using(mode):
        backend.seed(0)
        model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=2,
                    heads=2, mlp_dim=32, dropout=0.1, seed=0)
        optimizer = AdamW(param_groups_weight_decay(model, 0.05), lr=3e-3)
        replicas = Replicas(model, threads=2, processes=False)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 4, 16)
        losses = []
        for _ in range(steps):
            model.zero_grad()
            loss, _ = replicas.loss_and_grads(x, y, cross_entropy)
            optimizer.step()
            losses.append(loss)
        return losses


def test_a_short_training_learns_the_same_in_both_modes():
    fast, reference = _short_training("fast"), _short_training("reference")
    for losses in (fast, reference):
        assert all(np.isfinite(losses))
        assert losses[-1] < 0.8 * losses[0]           # it learns (one fixed batch)
    # the same function: the same losses up to float32 rounding, step after step
    np.testing.assert_allclose(reference, fast, rtol=2e-3)
