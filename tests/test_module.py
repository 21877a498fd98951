"""The Module contract: names, state_dict, accumulation, modes; and the backend."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import randn

import minivit
from minivit import backend
from minivit.layers import Linear
from minivit.vit import ViT


def timm_names(depth):
    """timm's VisionTransformer state_dict keys, in its order."""
    names = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        for sub in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                    "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            names.append(f"blocks.{i}.{sub}")
    return names + ["norm.weight", "norm.bias", "head.weight", "head.bias"]


def test_state_dict_names_and_layouts(f32):
    D, M, K, C, P = 16, 24, 5, 3, 4
    model = ViT(image_size=16, patch_size=P, in_channels=C, num_classes=K, dim=D, depth=2,
                heads=2, mlp_dim=M)
    sd = model.state_dict()
    assert list(sd) == timm_names(2)
    assert [n for n, _ in model.named_parameters()] == list(sd)
    expected = {"cls_token": (1, 1, D), "pos_embed": (1, 17, D),
                "patch_embed.proj.weight": (D, C, P, P), "patch_embed.proj.bias": (D,),
                "blocks.1.attn.qkv.weight": (3 * D, D), "blocks.1.attn.qkv.bias": (3 * D,),
                "blocks.1.attn.proj.weight": (D, D), "blocks.0.mlp.fc1.weight": (M, D),
                "blocks.0.mlp.fc2.weight": (D, M), "norm.weight": (D,),
                "head.weight": (K, D), "head.bias": (K,)}
    for key, shape in expected.items():
        assert sd[key].shape == shape, key
    assert all(isinstance(v, np.ndarray) for v in sd.values())


def test_timm_like_init():
    model = ViT(image_size=28, patch_size=7, dim=64, depth=2, heads=4, mlp_dim=256, seed=0)
    sd = model.state_dict()
    w = sd["blocks.0.mlp.fc1.weight"]
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
    assert abs(sd["pos_embed"].std() - 0.02) < 0.003
    assert np.abs(sd["cls_token"]).max() < 1e-5
    assert not sd["blocks.0.attn.qkv.bias"].any() and not sd["head.bias"].any()
    assert (sd["norm.weight"] == 1).all()


def test_seed_reproducible():
    a = ViT(dim=16, depth=1, heads=2, mlp_dim=16, seed=3).state_dict()
    b = ViT(dim=16, depth=1, heads=2, mlp_dim=16, seed=3).state_dict()
    c = ViT(dim=16, depth=1, heads=2, mlp_dim=16, seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["head.weight"], c["head.weight"])


def test_load_state_dict_round_trip(f32):
    cfg = dict(dim=16, depth=1, heads=2, mlp_dim=16)
    src, dst = ViT(**cfg, seed=1), ViT(**cfg, seed=2)
    dst.load_state_dict(src.state_dict())
    x = randn(2, 1, 28, 28)
    np.testing.assert_array_equal(backend.to_numpy(src.forward(x)),
                                  backend.to_numpy(dst.forward(x)))


def test_load_state_dict_mismatch_lists_everything(f32):
    model = ViT(dim=16, depth=1, heads=2, mlp_dim=16)
    sd = model.state_dict()
    del sd["head.bias"]
    sd["blocks.7.norm1.weight"] = np.ones(16)
    sd["head.weight"] = np.zeros((3, 16))
    with pytest.raises(ValueError) as info:
        model.load_state_dict(sd)
    msg = str(info.value)
    assert "missing keys: head.bias" in msg
    assert "unexpected keys: blocks.7.norm1.weight" in msg
    assert "head.weight: expected (10, 16), got (3, 16)" in msg


def test_gradients_accumulate_until_zero_grad(f64):
    layer = Linear(4, 3)
    x, dout = randn(5, 4, seed=1), randn(5, 3, seed=2)
    layer.forward(x)
    layer.backward(dout)
    once = backend.to_numpy(layer.weight.grad).copy()
    layer.backward(dout)
    np.testing.assert_allclose(backend.to_numpy(layer.weight.grad), 2 * once, rtol=1e-14)
    layer.zero_grad()
    assert not backend.to_numpy(layer.weight.grad).any()
    assert not backend.to_numpy(layer.bias.grad).any()


def test_train_eval_switch_reaches_every_module(f32):
    model = ViT(dim=16, depth=2, heads=2, mlp_dim=16, dropout=0.5, attn_dropout=0.5)
    model.eval()
    assert all(not m.training for _, m in model.named_modules())
    x = randn(2, 1, 28, 28)
    a, b = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
    model.train()
    assert all(m.training for _, m in model.named_modules())
    c = model.forward(x)
    assert not np.array_equal(backend.to_numpy(a), backend.to_numpy(c))


def test_gradients_are_allocated_when_first_needed(f32):
    """A model that only infers holds no gradient arrays; asked for, a
    gradient is zeros of its parameter's shape; backward fills every one."""
    from minivit.loss import cross_entropy
    model = ViT(dim=16, depth=2, heads=2, mlp_dim=16)
    params = list(model.parameters())
    x = randn(3, 1, 28, 28)
    with minivit.no_grad():
        model.forward(x)
    model.zero_grad()
    assert all(p._grad is None for p in params)
    first = params[0].grad
    assert first.shape == params[0].data.shape and not first.any()
    assert params[0].grad is first                      # allocated once
    _, dlogits = cross_entropy(model.forward(x), backend.to_device(np.array([1, 2, 3])))
    model.backward(dlogits)
    assert all(p._grad is not None and p.grad.any() for p in params)
    model.zero_grad()
    assert all(not p.grad.any() for p in params)


def test_sincos_pos_embed_fixed_and_saved(f32):
    model = ViT(dim=16, depth=1, heads=2, mlp_dim=16, pos_embed="sincos")
    assert "pos_embed" in model.state_dict()
    assert not model.pos_embed.requires_grad and model.pos_embed.grad is None
    table = model.state_dict()["pos_embed"]
    assert not table[0, 0].any()                       # CLS slot
    np.testing.assert_allclose(table[0, 1, :4], [0, 0, 0, 0], atol=1e-7)   # sin(0)
    np.testing.assert_allclose(table[0, 1, 4:8], [1, 1, 1, 1], atol=1e-7)  # cos(0)


# -- backend --------------------------------------------------------------------
def _run(env_value):
    env = dict(os.environ, MINIVIT_BACKEND=env_value, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", "import minivit"], env=env,
                          capture_output=True, text=True)


def test_unknown_backend_is_value_error():
    with pytest.raises(ValueError, match="valid values are numpy, cupy"):
        backend.use("tensorflow")
    result = _run("jax")
    assert result.returncode != 0 and "ValueError" in result.stderr
    assert "valid values are numpy, cupy" in result.stderr


def test_cupy_where_it_cannot_run_is_a_clear_error():
    # Hide every GPU: CuPy (if installed) then sees none; without CuPy the
    # error says how to install it. Never a silent fallback to NumPy.
    result = _run("cupy")
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr
    assert 'pip install -e ".[cuda12]"' in result.stderr or "no usable" in result.stderr \
        or "no GPU is visible" in result.stderr


def test_using_restores_backend_and_dtype():
    before = (backend.name, backend.default_dtype())
    with backend.using("numpy", dtype="float64"):
        assert backend.default_dtype() == np.float64
        assert Linear(2, 2).weight.data.dtype == np.float64
    assert (backend.name, backend.default_dtype()) == before
    with pytest.raises(ValueError, match="float32, float64"):
        backend.set_default_dtype("float16")


# -- no_grad -------------------------------------------------------------------
def _rich_vit(**kw):
    return ViT(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=16, depth=2,
               heads=2, mlp_dim=24, pre_logits=8, seed=0, **kw)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("options", [dict(), dict(gelu="exact", pool="avg")])
def test_no_grad_gives_the_same_output_and_keeps_nothing(f64, training, options):
    if options.get("gelu") == "exact":
        pytest.importorskip("scipy")
    model = _rich_vit(**options).train(training)
    x = randn(3, 3, 16, 16, seed=1)
    backend.seed(7)
    expected = backend.to_numpy(model.forward(x))
    # every module that runs a forward keeps something (the containers and
    # patch_embed.proj, a holder of the conv parameters, run none)
    computing = [name for name, m in model.named_modules()
                 if name not in ("blocks", "patch_embed.proj")]
    assert all(dict(model.named_modules())[name].cache is not None for name in computing)
    backend.seed(7)                                    # same dropout masks (none here)
    with minivit.no_grad():
        assert not minivit.is_grad_enabled()
        got = backend.to_numpy(model.forward(x))
    assert minivit.is_grad_enabled()
    np.testing.assert_array_equal(got, expected)
    kept = [name for name, m in model.named_modules() if m.cache is not None]
    assert kept == []
    # attention maps stay available for plots
    assert all(block.attn.attn_probs is not None for block in model.blocks)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(randn(3, 5, seed=2))


def test_no_grad_nests_is_a_decorator_and_is_per_thread():
    import threading

    seen = {}

    @minivit.no_grad()
    def inside():
        with minivit.no_grad():
            pass
        seen["after_nested"] = minivit.is_grad_enabled()   # still off
        worker = threading.Thread(target=lambda: seen.update(thread=minivit.is_grad_enabled()))
        worker.start()
        worker.join()

    inside()
    assert seen == {"after_nested": False, "thread": True}
    assert minivit.is_grad_enabled()
    with pytest.raises(KeyError):
        with minivit.no_grad():
            raise KeyError("x")
    assert minivit.is_grad_enabled()                       # restored after an error


def test_backward_after_no_grad_forward_of_a_layer_says_why(f32):
    layer = Linear(4, 3)
    with minivit.no_grad():
        layer.forward(randn(2, 4))
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(randn(2, 3))


def test_modules_and_parameters_walk_as_the_named_walks_do():
    """``modules()`` and ``parameters()`` (no names built: the replicas run
    them every step) list what ``named_modules`` / ``named_parameters`` list,
    in the same order."""
    from minivit.vit import ViT
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=16, pool="avg", pre_logits=7, seed=1)
    modules, params = model.modules(), model.parameters()
    assert modules == [m for _, m in model.named_modules()]
    assert params == [p for _, p in model.named_parameters()]
    assert len(params) == len(model.state_dict()) and modules[0] is model


@pytest.mark.parametrize("stride", [None, 2])
@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_backward_without_the_images_gradient(f64, pool, stride):
    """``backward(dlogits, input_grad=False)`` (a training step) computes no
    image gradient and returns None; every parameter's gradient is the one a
    full backward gives, bit for bit."""
    from helpers import randomize_parameters
    model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                heads=2, mlp_dim=16, pool=pool, stride=stride, seed=3)
    randomize_parameters(model, scale=0.4)
    x, dlogits = randn(3, 2, 8, 8, seed=1), randn(3, 3, seed=2)
    model.forward(x)
    dx = model.backward(dlogits)
    full = {name: p.grad.copy() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.forward(x)
    assert dx.shape == x.shape
    assert model.backward(dlogits, input_grad=False) is None
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert backend.to_numpy(p.grad).tobytes() == backend.to_numpy(full[name]).tobytes(), name


def test_training_steps_skip_the_images_gradient_only_where_backward_can(f64, monkeypatch):
    """``backward_for_parameters`` (the replicas' step) tells a ViT to skip the
    images' gradient (its col2im never runs) and runs any other model's
    ``backward(dout)`` as it is."""
    from minivit.layers import PatchEmbed
    from minivit.loss import cross_entropy
    from minivit.parallel.workers import backward_for_parameters, replica_step

    def refuse(*args):
        raise AssertionError("the images' gradient was computed")
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=1,
                heads=2, mlp_dim=16, seed=0)
    monkeypatch.setattr(PatchEmbed, "col2im", refuse)
    x, y = randn(2, 1, 8, 8, seed=4), np.array([0, 2])
    loss, logits = replica_step(model, backend.to_device(x), backend.to_device(y),
                                cross_entropy, 1.0)
    assert logits.shape == (2, 3) and float(loss) > 0
    assert float(abs(model.head.weight.grad).sum()) > 0

    layer = Linear(4, 3)
    layer.forward(randn(5, 4, seed=5))
    dout = randn(5, 3, seed=6)
    dx = backward_for_parameters(layer, dout)
    assert dx.shape == (5, 4)
    assert np.allclose(backend.to_numpy(dx),
                       backend.to_numpy(dout) @ backend.to_numpy(layer.weight.data))


def test_the_input_grad_check_keeps_no_backward_alive():
    """The cache of which backwards take ``input_grad`` holds its functions
    weakly: a model's swapped-in backward (a closure over the model, as the
    exercises swap in) is freed with it."""
    import gc
    import weakref

    from minivit.parallel.workers import backward_for_parameters

    def swapped(model):
        def backward(dout, input_grad=True):
            return model                               # a closure over the model, as swap's
        return backward
    model = Linear(2, 2)
    model.backward = swapped(model)
    assert backward_for_parameters(model, None) is model
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
