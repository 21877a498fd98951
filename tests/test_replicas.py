"""Replicas (data parallelism over threads) compute what the model alone does."""

import numpy as np
import pytest

import minivit
from minivit import backend, ops
from minivit.loss import cross_entropy
from minivit.replicas import Replicas
from minivit.vit import ViT

CONFIG = dict(image_size=8, patch_size=4, in_channels=1, num_classes=5, dim=16, depth=2,
              heads=2, mlp_dim=32)


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 5, n)


@pytest.mark.parametrize("threads,batch", [(2, 16), (3, 23), (4, 13)])
def test_gradient_loss_and_logits_equal_the_model_alone(threads, batch):
    with backend.using("numpy", "float64"):
        alone, split = ViT(**CONFIG, seed=1), ViT(**CONFIG, seed=1)
        x, y = _batch(batch)
        logits_alone = alone.forward(x)
        loss_alone, dlogits = cross_entropy(logits_alone, y)
        alone.backward(dlogits)

        replicas = Replicas(split, threads=threads)
        assert len(replicas.slices(batch)) == min(threads, batch // 4) > 1
        loss, logits = replicas.forward_backward(x, y, cross_entropy)
        assert loss == pytest.approx(loss_alone, rel=1e-13)
        np.testing.assert_allclose(logits, logits_alone, rtol=1e-12, atol=1e-14)
        for (name, a), b in zip(alone.named_parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-14, err_msg=name)
        # a second step adds to the gradients, as model.backward does
        replicas.forward_backward(x, y, cross_entropy)
        for a, b in zip(alone.parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, 2 * a.grad, rtol=1e-10, atol=1e-14)


def test_replicas_share_the_weights_and_see_updates():
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1)
        replicas = Replicas(model, threads=2)
        x, y = _batch(8)
        replicas.forward_backward(x, y, cross_entropy)
        other = replicas._replicas[1]
        for mine, theirs in zip(model.parameters(), other.parameters()):
            assert theirs.data is mine.data                  # shared, not copied
            if mine.grad is not None:
                assert theirs.grad is not mine.grad
        # a new array put into the model (as load_state_dict may) reaches the replica
        model.head.weight.data = model.head.weight.data * 2.0
        with minivit.no_grad():
            np.testing.assert_allclose(replicas.logits(x), model.forward(x), rtol=1e-12)


def test_no_grad_and_eval_mode_reach_every_replica():
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1, dropout=0.5)
        replicas = Replicas(model, threads=2)
        x, _ = _batch(8)
        model.eval()
        with minivit.no_grad():
            out = replicas.logits(x)
        assert all(m.cache is None for r in replicas._replicas for _, m in r.named_modules())
        np.testing.assert_allclose(out, model.forward(x), rtol=1e-12)   # no dropout in eval


def test_dropout_masks_are_reproducible_and_differ_between_replicas():
    with backend.using("numpy", "float64"):
        x, y = _batch(8)
        grads = []
        for _ in range(2):
            model = ViT(**CONFIG, seed=1, dropout=0.5)
            backend.seed(7)
            Replicas(model, threads=2).forward_backward(x, y, cross_entropy)
            grads.append([p.grad.copy() for p in model.parameters() if p.grad is not None])
        for a, b in zip(*grads):
            np.testing.assert_array_equal(a, b)
        # both halves of the batch dropped with the same mask would be a bug:
        model = ViT(**CONFIG, seed=1, dropout=0.5)
        same = np.concatenate([x[:4], x[:4]])
        with minivit.no_grad():
            logits = Replicas(model, threads=2).logits(same)
        assert not np.allclose(logits[:4], logits[4:])


def test_a_replica_error_reaches_the_caller_and_small_batches_run_alone():
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1)
        replicas = Replicas(model, threads=2)
        assert replicas.slices(7) == [(0, 7)]                 # too small to cut
        with pytest.raises(ValueError, match="image"):
            replicas.logits(np.zeros((8, 1, 9, 9)))
        with pytest.raises(ValueError, match="threads"):
            Replicas(model, threads=0)


def test_blas_threads_are_restored_and_parallel_rows_is_serial_inside():
    seen = []

    def kernel(a, out):
        seen.append(len(a))
        out[...] = a * 2

    pytest.importorskip("threadpoolctl")

    def blas():                       # NumPy's BLAS, as ops found it
        return [c.get_num_threads() for c in ops._blas_controllers]

    with ops.blas_threads(1):
        assert blas() and all(n == 1 for n in blas())
    before = blas()
    with ops.blas_threads(1):
        assert all(n == 1 for n in blas())
    assert blas() == before
    x = np.ones((64, 8192), dtype=np.float32)
    out = np.empty_like(x)
    with ops.serial():
        ops.parallel_rows(kernel, x, out)
    np.testing.assert_array_equal(out, 2 * x)
    assert sum(seen) == 64 and max(seen) < 64                 # blocks, one thread


def test_replicating_leaves_the_model_caches_and_copies_none():
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1)
        x, y = _batch(8)
        model.forward(x)                                       # caches present
        before = {name: m.cache for name, m in model.named_modules()}
        replicas = Replicas(model, threads=2)
        replicas._replicas_for(2)
        copy = replicas._replicas[1]
        assert all(m.cache is None for _, m in copy.named_modules())
        assert all(m.cache is before[name] for name, m in model.named_modules())
        assert copy.patch_embed._tiled is model.patch_embed._tiled is True
