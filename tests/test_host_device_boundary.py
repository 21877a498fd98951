"""Host/device mixing bugs, caught on machines without a GPU.

minivit keeps NumPy at its boundaries (``backend.to_numpy`` / ``backend.to_device``,
data loading, checkpoint saving, plotting) and writes everything in between
against ``backend.xp``. On CuPy, breaking that rule fails only on a GPU, which
CI does not have. These tests run the real code paths -- ViT forward and
backward (both poolings, both position embeddings, dropout, overlapping
patches), the loss, the gradient checker, AdamW/SGD with clipping and
``state_dict`` round trips, checkpoints, ``Trainer.fit`` with plots,
``evaluate`` and the attention/position-embedding tools -- on the fake device
of ``tests/fake_device.py``: NumPy dressed up as CuPy, whose arrays refuse
what CuPy refuses.

What this catches:

* NumPy called on a device array: ``np.exp(dev)``, ``np.sum(dev)``,
  ``np.concatenate([dev, ...])``, ``np.shape(dev)``. (Stricter than CuPy,
  which forwards such calls to a CuPy function of the same name where one
  exists and fails where none does: minivit's rule is ``backend.xp``.)
* Implicit device-to-host conversion: ``np.asarray(dev)``, ``np.array(dev)``,
  ``np.savez(..., dev)``, handing a device array to matplotlib -- CuPy's own
  "Implicit conversion to a NumPy array is not allowed" TypeError.
* Host arrays mixed into device arithmetic: ``dev + host``, ``host * dev``,
  ``dev += host``, ``xp.matmul(dev, host)``, ``xp.concatenate([dev, host])``,
  ``dev[...] = host``; 0-d host arrays too (CuPy refuses them as well).
* ``isinstance(x, np.ndarray)`` tests that a device array fails (a fake
  array is not an ``np.ndarray``, like a CuPy one), and code that takes a
  reduction or ``dev[i, j]`` for a host scalar (they are 0-d device arrays).

What it cannot catch:

* Code paths these tests do not run (e.g. ``examples/``; ``minivit/data`` and
  ``minivit/train.py`` are covered only as far as ``Trainer.fit`` /
  ``evaluate`` use them). ``test_isinstance_ndarray_only_at_the_boundary``
  below scans the device-side modules for ``isinstance(..., np.ndarray)``
  statically, as a partial stand-in.
* Functions that NumPy has and CuPy lacks, or has with another signature or
  default: ``backend.xp.f`` is NumPy's ``f`` here.
* GPU-only semantics: out-of-bounds integer indices wrap around on CuPy
  instead of raising, duplicate indices in ``a[idx] = v`` store an undefined
  one of the values, float results differ in the last bits, dtype promotion
  corner cases, and ``cupy.random`` draws other numbers than NumPy for the
  same seed.
* Asynchrony and cost: a missing ``backend.synchronize()`` before reading a
  timer, and hidden syncs or transfers such as ``float(dev)`` each step are
  legal here as on CuPy; they are slow on a GPU, not wrong.
* CuPy's install, driver and memory problems (``tests/test_backend.py``
  covers the messages for those).

Whole file: a few seconds (small models, few steps).
"""

import ast
import pathlib

import numpy as np
import pytest

import fake_device
from fake_device import DeviceArray, HostDeviceError
from helpers import randn
from minivit import backend, kernels
from minivit.checkpoint import load_checkpoint, save_checkpoint
from minivit.gradcheck import assert_gradients_ok, check_module
from minivit.loss import cross_entropy
from minivit.optim import SGD, AdamW, WarmupCosine, clip_grad_norm_, param_groups_weight_decay
from minivit.vit import ViT

REPO = pathlib.Path(__file__).resolve().parent.parent
SMALL = dict(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2,
             heads=2, mlp_dim=32)


@pytest.fixture
def device():
    """minivit on the fake device for one test; the NumPy backend is restored after."""
    before = (backend.xp, backend.name, backend.default_dtype())
    with fake_device.installed() as xp:
        yield xp
    assert (backend.xp, backend.name, backend.default_dtype()) == before


@pytest.fixture
def device64():
    with fake_device.installed(dtype="float64") as xp:
        yield xp


def host_images(n, seed=0, size=8):
    return np.random.default_rng(seed).standard_normal((n, 1, size, size)).astype(np.float32)


def assert_on_device(*arrays):
    for a in arrays:
        assert isinstance(a, DeviceArray), f"expected a device array, got {type(a).__name__}"


# --------------------------------------------------------------------------
# The fake refuses what CuPy refuses (so the tests below can fail)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mistake", [
    lambda xp, d, h: np.exp(d),
    lambda xp, d, h: np.sum(d),
    lambda xp, d, h: np.concatenate([d, d]),
    lambda xp, d, h: np.shape(d),
    lambda xp, d, h: np.asarray(d),
    lambda xp, d, h: np.array(d, dtype=np.float64),
    lambda xp, d, h: d + h,
    lambda xp, d, h: h * d,
    lambda xp, d, h: d @ h.T,
    lambda xp, d, h: d + np.asarray(1.0),
    lambda xp, d, h: xp.add(d, h),
    lambda xp, d, h: xp.concatenate([d, h]),
    lambda xp, d, h: xp.matmul(d, h.T),
    lambda xp, d, h: d.__setitem__(Ellipsis, h),
    lambda xp, d, h: d.__iadd__(h),
    lambda xp, d, h: h.__iadd__(d),
    lambda xp, d, h: np.testing.assert_allclose(d, h),
], ids=["np.exp", "np.sum", "np.concatenate", "np.shape", "np.asarray", "np.array",
        "dev+host", "host*dev", "dev@host", "dev+host0d", "xp.add(dev,host)",
        "xp.concatenate([dev,host])", "xp.matmul(dev,host)", "dev[...]=host", "dev+=host",
        "host+=dev", "assert_allclose(dev,host)"])
def test_fake_refuses_host_device_mixing(device, mistake):
    d = device.ones((2, 3), dtype=np.float32)
    h = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(TypeError):
        mistake(device, d, h)


def test_fake_allows_what_cupy_allows(device):
    xp = device
    d = xp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not isinstance(d, np.ndarray) and isinstance(d, xp.ndarray)
    assert backend.is_array(d)
    for result in (d + 1.0, 2 * d, np.float32(0.5) * d, d * np.float32(2), d @ d.T, d.T,
                   d / d.max(), -d, abs(d), d > 1, d.reshape(3, 2), d.astype(np.float64),
                   d.sum(axis=0), d.max(), d[0, 1], d[np.array([1, 0])], xp.exp(d),
                   xp.concatenate([d, d]), xp.linalg.norm(d), d.copy()):
        assert_on_device(result)
    assert float(d.sum()) == 15.0 and d.sum().item() == 15.0 and int(d[1, 2]) == 5
    assert d.sum().shape == ()                     # a 0-d device array, as on CuPy
    assert len(d) == 2 and [r.shape for r in d] == [(3,), (3,)]
    e = d.copy()
    e += 1.0
    e *= d
    e[0] = d[1]
    e[np.array([1])] = np.zeros((1, 3), np.float32)   # host index and values: CuPy moves them
    out = xp.empty_like(d)
    assert xp.multiply(d, 2.0, out=out) is out
    np.testing.assert_array_equal(out.get(), 2 * np.arange(6).reshape(2, 3))
    # the boundary functions
    host = backend.to_numpy(d)
    assert type(host) is np.ndarray and host.dtype == np.float32
    host[0, 0] = 99.0                              # a copy, not a view of the device
    assert float(d[0, 0]) == 0.0
    back = backend.to_device(host, np.float64)
    assert_on_device(back)
    assert back.dtype == np.float64 and float(back[0, 0]) == 99.0
    assert backend.device_name().startswith(fake_device.FAKE_GPU_NAME)
    backend.synchronize()


def test_a_host_call_inside_a_layer_is_caught(device, monkeypatch):
    """Put a realistic bug into the code (a helper that builds its constant
    with NumPy instead of backend.xp) and the ViT tests below would fail."""
    import minivit.kernels.reductions

    def sum_last_with_a_host_constant(x):
        return (x @ np.ones(x.shape[-1], dtype=x.dtype))[..., None]

    monkeypatch.setattr(minivit.kernels.reductions, "sum_last", sum_last_with_a_host_constant)
    monkeypatch.setattr("minivit.kernels.attention.sum_last", sum_last_with_a_host_constant)
    model = ViT(**SMALL, seed=0)
    with pytest.raises(HostDeviceError, match="mixed with device arrays"):
        model.forward(host_images(2))


def test_the_fake_restores_the_backend():
    import sys

    before = (backend.xp, backend.name, backend.default_dtype(), sys.modules.get("cupy"))
    with pytest.raises(RuntimeError, match="boom"):
        with fake_device.installed(dtype="float64") as xp:
            assert backend.name == "cupy" and backend.default_dtype() == np.float64
            assert sys.modules["cupy"] is xp
            raise RuntimeError("boom")
    assert (backend.xp, backend.name, backend.default_dtype(), sys.modules.get("cupy")) == before


# --------------------------------------------------------------------------
# The model, the loss, the gradient checker
# --------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_vit_forward_backward_on_the_device(device, pool, pos_embed):
    model = ViT(**SMALL, pool=pool, pos_embed=pos_embed, dropout=0.1, attn_dropout=0.1,
                seed=0)
    x = host_images(4)
    logits = model.forward(x)                               # host input is moved over
    assert_on_device(logits)
    loss, dlogits = cross_entropy(logits, np.array([0, 1, 2, 1]), label_smoothing=0.1)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert_on_device(dlogits)
    dx = model.backward(dlogits)
    assert_on_device(dx)
    assert dx.shape == x.shape
    for name, p in model.named_parameters():
        assert_on_device(p.data)
        if p.requires_grad:
            assert_on_device(p.grad)
            assert np.isfinite(backend.to_numpy(p.grad)).all(), name
    model.eval()
    assert_on_device(model.forward(model_input := backend.to_device(x)))
    assert_on_device(model.forward(model_input))            # device input stays put


@pytest.mark.parametrize("stride", [None, 2])
def test_device_run_equals_the_numpy_run(stride):
    """Without dropout the fake device computes exactly what NumPy computes
    (on the NumPy kernels, which a device runs: the fused ones are CPU-only)."""
    def run():
        model = ViT(**SMALL, pool="mean", stride=stride, seed=3)
        logits = model.forward(host_images(3, seed=5))
        labels = backend.to_device(np.array([2, 0, 1]))
        loss, dlogits = cross_entropy(logits, labels, label_smoothing=0.05)
        dx = model.backward(dlogits)
        grads = {k: backend.to_numpy(p.grad) for k, p in model.named_parameters()}
        return backend.to_numpy(logits), loss, backend.to_numpy(dx), grads

    with backend.using("numpy"), kernels.using("numpy"):
        ref = run()
    with fake_device.installed():
        got = run()
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1] == ref[1]
    np.testing.assert_array_equal(got[2], ref[2])
    for key in ref[3]:
        np.testing.assert_array_equal(got[3][key], ref[3][key], err_msg=key)


def test_gradcheck_on_the_device(device64):
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8, depth=1,
                heads=2, mlp_dim=16, pool="mean", dropout=0.1, seed=0)
    x = randn(2, 1, 8, 8, seed=1)                           # a float64 device array
    assert_on_device(x)
    report = check_module(model, x, mode="direction")
    assert_gradients_ok(report)
    report = check_module(model, x, samples=3, order=4)      # elementwise, a few per tensor
    assert_gradients_ok(report)
    assert report.checked >= 3 * len(report.per_tensor)


def test_module_state_dict_round_trip(device):
    model = ViT(**SMALL, seed=0)
    state = model.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())   # host copies
    other = ViT(**SMALL, seed=1)
    other.load_state_dict(state)                                # host arrays in
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    third = ViT(**SMALL, seed=2)
    third.load_state_dict({k: p.data for k, p in model.named_parameters()})  # device arrays in
    for key, value in third.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    for _, p in third.named_parameters():
        assert_on_device(p.data)


# --------------------------------------------------------------------------
# Optimizers and checkpoints
# --------------------------------------------------------------------------
def train_steps(model, optimizer, steps, schedule=None, start=0):
    for step in range(start, start + steps):
        if schedule is not None:
            schedule.apply(optimizer, step)
        optimizer.zero_grad()
        logits = model.forward(host_images(4, seed=step))
        _, dlogits = cross_entropy(logits, np.arange(4) % 3)
        model.backward(dlogits)
        norm = clip_grad_norm_(model.parameters(), 0.5)
        assert isinstance(norm, float) and norm > 0
        optimizer.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda m: AdamW(param_groups_weight_decay(m, 0.05), lr=1e-2),
    lambda m: SGD(m.named_parameters(), lr=1e-2, momentum=0.9, nesterov=True,
                  weight_decay=1e-4),
], ids=["adamw", "sgd"])
def test_optimizer_steps_and_state_dict_on_the_device(device, make_optimizer, tmp_path):
    model = ViT(**SMALL, dropout=0.1, seed=0)
    optimizer = make_optimizer(model)
    schedule = WarmupCosine(1e-2, warmup_steps=1, total_steps=6)
    train_steps(model, optimizer, 3, schedule)
    for state in optimizer.state.values():
        for value in state.values():
            assert isinstance(value, (int, DeviceArray))
    opt_state = optimizer.state_dict()
    assert all(not isinstance(v, DeviceArray) for v in opt_state.values())
    # a checkpoint of model + optimizer, then continue from it in a fresh pair
    path = save_checkpoint(tmp_path / "ckpt.npz", model.state_dict(), opt_state, epoch=1,
                           rng_state=backend.get_rng_state())
    ckpt = load_checkpoint(path)
    resumed = ViT(**SMALL, dropout=0.1, seed=9)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt = make_optimizer(resumed)
    resumed_opt.load_state_dict(ckpt["optimizer"])
    for state in resumed_opt.state.values():
        for value in state.values():
            assert isinstance(value, (int, DeviceArray))
    backend.seed(11)
    train_steps(model, optimizer, 2, schedule, start=3)
    backend.seed(11)
    train_steps(resumed, resumed_opt, 2, schedule, start=3)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_checkpoint_of_device_arrays(device, tmp_path):
    """save_checkpoint takes device arrays too (it moves them to the host)."""
    model = ViT(**SMALL, seed=0)
    state = {k: p.data for k, p in model.named_parameters()}
    path = save_checkpoint(tmp_path / "dev.npz", state, {"step": backend.xp.asarray(3)})
    ckpt = load_checkpoint(path)
    for key, value in ckpt["model"].items():
        assert type(value) is np.ndarray
        np.testing.assert_array_equal(value, state[key].get())
    assert int(ckpt["optimizer"]["step"]) == 3


# --------------------------------------------------------------------------
# Training loop and the tools that look inside a model
# --------------------------------------------------------------------------
def tiny_dataset(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n).astype(np.int64)
    x = rng.normal(0.0, 0.5, size=(n, 1, 8, 8)).astype(np.float32)
    x[np.arange(n), 0, y * 2, :] += 1.5                  # a bright row per class
    return x, y


def test_trainer_fit_and_evaluate_on_the_device(device, tmp_path):
    from minivit.train import TrainConfig, Trainer, evaluate
    from minivit.viz import (attention_rollout, cls_attention, load_model,
                             plot_attention, plot_pos_embed_similarity,
                             pos_embed_similarity, predict_probs)

    train, test = tiny_dataset(64, seed=1), tiny_dataset(32, seed=2)
    model = ViT(**SMALL, dropout=0.1, seed=0)
    trainer = Trainer(model, train, test,
                      TrainConfig(epochs=1, batch_size=16, lr=5e-3, warmup_epochs=0.5,
                                  augment=True, clip_grad=1.0, eval_batch_size=20, seed=3),
                      out_dir=tmp_path, dataset="rows", quiet=True, plots=True)
    history = trainer.fit()
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    for name in ("last.npz", "best.npz", "metrics.jsonl", "curves.png",
                 "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = evaluate(model, *test, batch_size=20)
    assert type(result.predictions) is np.ndarray and len(result.predictions) == 32
    assert 0.0 <= result.accuracy <= 1.0 and np.isfinite(result.loss)
    assert trainer.evaluate().accuracy == result.accuracy

    # the attention and position-embedding tools, on the trained model
    loaded, config = load_model(tmp_path / "best.npz")
    assert_on_device(loaded.cls_token.data)
    probs = predict_probs(loaded, test[0][:5])
    assert type(probs) is np.ndarray and probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    heads, rollout = cls_attention(loaded), attention_rollout(loaded)
    assert type(heads) is np.ndarray and heads.shape == (5, 2, 2, 2)
    assert type(rollout) is np.ndarray and rollout.shape == (5, 2, 2)
    sim = pos_embed_similarity(loaded)
    assert type(sim) is np.ndarray and sim.shape == (2, 2, 2, 2)
    preds = probs.argmax(axis=1)
    plot_attention(backend.to_device(test[0][:5]), heads, rollout, tmp_path / "attn.png",
                   labels=test[1][:5], preds=preds, class_names=["a", "b", "c"])
    plot_pos_embed_similarity(sim, tmp_path / "pos.png")
    assert (tmp_path / "attn.png").stat().st_size > 0
    assert (tmp_path / "pos.png").stat().st_size > 0


# --------------------------------------------------------------------------
# A static check for what the runs above may not reach
# --------------------------------------------------------------------------
# Modules that compute on backend.xp arrays: an ``isinstance(x, np.ndarray)``
# there is False for every CuPy array, so it is a GPU-only branch. The host
# boundary (backend.py, checkpoint.py, data, train.py, viz.py, atomic.py)
# may use it.
DEVICE_SIDE = ["minivit/layers", "minivit/vit.py", "minivit/loss.py", "minivit/optim",
               "minivit/module.py", "minivit/kernels", "minivit/parallel/threads.py",
               "minivit/special.py", "minivit/gradcheck.py", "minivit/init.py"]


def _numpy_aliases(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == "numpy"}
    return names


def _ndarray_isinstance_calls(path, root=REPO):
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _numpy_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            for sub in ast.walk(node.args[1]):
                if (isinstance(sub, ast.Attribute) and sub.attr == "ndarray"
                        and isinstance(sub.value, ast.Name) and sub.value.id in aliases):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_isinstance_ndarray_only_at_the_boundary(tmp_path):
    files = []
    for entry in DEVICE_SIDE:
        p = REPO / entry
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    assert len(files) >= 12
    offenders = [hit for f in files for hit in _ndarray_isinstance_calls(f)]
    assert not offenders, (
        "isinstance(..., numpy.ndarray) in device-side code is False for CuPy arrays; "
        f"use backend.is_array() or move the check to the boundary: {offenders}")
    # the scan itself finds such a check
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\ndef f(x):\n    return isinstance(x, (int, np.ndarray))\n")
    assert _ndarray_isinstance_calls(bad, root=tmp_path) == ["bad.py:3"]
