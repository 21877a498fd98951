"""Replicas (data parallelism over threads or worker processes) compute what
the model alone does."""

import functools
import os
import signal

import numpy as np
import pytest

import minivit
from minivit import backend, kernels
from minivit.layers import Linear
from minivit.loss import cross_entropy
from minivit.parallel.replicas import Replicas, _fork_available
from minivit.vit import ViT

KINDS = [pytest.param(False, id="threads"),
         pytest.param(True, id="processes", marks=pytest.mark.skipif(
             not _fork_available(), reason="worker processes need fork (Linux)"))]

CONFIG = dict(image_size=8, patch_size=4, in_channels=1, num_classes=5, dim=16, depth=2,
              heads=2, mlp_dim=32)


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 5, n)


@pytest.mark.parametrize("processes", KINDS)
@pytest.mark.parametrize("threads,batch", [(2, 16), (3, 23), (4, 13)])
def test_gradient_loss_and_logits_equal_the_model_alone(threads, batch, processes):
    with backend.using("numpy", "float64"):
        alone, split = ViT(**CONFIG, seed=1), ViT(**CONFIG, seed=1)
        x, y = _batch(batch)
        logits_alone = alone.forward(x)
        loss_alone, dlogits = cross_entropy(logits_alone, y)
        alone.backward(dlogits)

        replicas = Replicas(split, threads=threads, processes=processes)
        assert len(replicas.slices(batch)) == min(threads, batch // 4) > 1
        loss, logits = replicas.loss_and_grads(x, y, cross_entropy)
        assert (replicas._workers is not None) == processes
        assert loss == pytest.approx(loss_alone, rel=1e-13)
        np.testing.assert_allclose(logits, logits_alone, rtol=1e-12, atol=1e-14)
        for (name, a), b in zip(alone.named_parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-14, err_msg=name)
        # a second step adds to the gradients, as model.backward does
        replicas.loss_and_grads(x, y, cross_entropy)
        for a, b in zip(alone.parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, 2 * a.grad, rtol=1e-10, atol=1e-14)


def test_thread_replicas_share_the_weights_and_see_updates():
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1)
        replicas = Replicas(model, threads=2, processes=False)
        x, y = _batch(8)
        replicas.loss_and_grads(x, y, cross_entropy)
        other = replicas._replicas[1]
        for mine, theirs in zip(model.parameters(), other.parameters()):
            assert theirs.data is mine.data                  # shared, not copied
            if mine.grad is not None:
                assert theirs.grad is not mine.grad
        # a new array put into the model (as load_state_dict may) reaches the replica
        model.head.weight.data = model.head.weight.data * 2.0
        with minivit.no_grad():
            np.testing.assert_allclose(replicas.logits(x), model.forward(x), rtol=1e-12)


@pytest.mark.parametrize("processes", KINDS)
def test_no_grad_and_eval_mode_reach_every_replica(processes):
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1, dropout=0.5)
        replicas = Replicas(model, threads=2, processes=processes)
        x, y = _batch(8)
        replicas.loss_and_grads(x, y, cross_entropy)          # workers start in train mode
        model.eval()
        with minivit.no_grad():
            out = replicas.logits(x)
        assert all(m.cache is None for r in replicas._replicas for _, m in r.named_modules())
        np.testing.assert_allclose(out, model.forward(x), rtol=1e-12)   # no dropout in eval
        model.train()
        with minivit.no_grad():
            assert not np.allclose(replicas.logits(x), out)     # dropout again, both halves
            assert not np.allclose(replicas.logits(x)[4:], out[4:])


@pytest.mark.parametrize("processes", KINDS)
def test_dropout_masks_are_reproducible_and_differ_between_replicas(processes):
    with backend.using("numpy", "float64"):
        x, y = _batch(8)
        grads = []
        for _ in range(2):
            model = ViT(**CONFIG, seed=1, dropout=0.5)
            backend.seed(7)
            Replicas(model, threads=2, processes=processes).loss_and_grads(
                x, y, cross_entropy)
            grads.append([p.grad.copy() for p in model.parameters() if p.grad is not None])
        for a, b in zip(*grads):
            np.testing.assert_array_equal(a, b)
        # both halves of the batch dropped with the same mask would be a bug:
        model = ViT(**CONFIG, seed=1, dropout=0.5)
        same = np.concatenate([x[:4], x[:4]])
        with minivit.no_grad():
            logits = Replicas(model, threads=2, processes=processes).logits(same)
        assert not np.allclose(logits[:4], logits[4:])


def _model_with_workers():
    if not _fork_available():
        pytest.skip("worker processes need fork (Linux)")
    model = ViT(**CONFIG, seed=1)
    return model, Replicas(model, threads=2, processes=True)


def test_worker_processes_share_the_weights_and_follow_the_model():
    with backend.using("numpy", "float64"):
        model, replicas = _model_with_workers()
        x, y = _batch(8)
        replicas.loss_and_grads(x, y, cross_entropy)
        workers = replicas._workers
        assert all(p.data is shared for p, shared in zip(model.parameters(),
                                                          workers.params.arrays))

        def check():
            with minivit.no_grad():
                np.testing.assert_allclose(replicas.logits(x), model.forward(x), rtol=1e-12)

        model.head.weight.data *= 3.0                     # in place, as an optimizer step
        check()
        model.head.weight.data = model.head.weight.data * 2.0   # a new array, same shape
        check()
        assert replicas._workers is workers and model.head.weight.data is \
            workers.params.arrays[-2]                       # copied into shared memory
        model.head = Linear(16, 5)                        # new parameters: forked anew
        check()
        assert replicas._workers is not workers
        assert not any(p.is_alive() for p in workers.procs)   # the old ones ended
        workers = replicas._workers
        assert all(p.is_alive() for p in workers.procs)
        replicas.close()
        assert replicas._workers is None and not any(p.is_alive() for p in workers.procs)


def test_worker_images_and_gradients_take_the_shared_or_the_plain_way():
    """A worker's slice of the images is written into its shared buffer (sized
    by the first slice; a larger one goes through the pipe), and its gradients
    are added to the model's in one flat sum while the model's gradients are
    views of one array (per parameter once one is replaced): all equal the
    model alone."""
    with backend.using("numpy", "float64"):
        model, replicas = _model_with_workers()
        alone = ViT(**CONFIG, seed=1)

        def step_equals_alone(x, y):
            model.zero_grad()
            alone.zero_grad()
            loss, logits = replicas.loss_and_grads(x, y, cross_entropy)
            want, dlogits = cross_entropy(alone.forward(x), y)
            alone.backward(dlogits)
            assert loss == pytest.approx(want, rel=1e-13)
            np.testing.assert_allclose(logits, alone.forward(x), rtol=1e-12)
            for (name, a), b in zip(alone.named_parameters(), model.parameters()):
                np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-14,
                                           err_msg=name)

        x, y = _batch(8)
        step_equals_alone(x, y)
        workers = replicas._workers
        shared = workers._images[0].raw[:x[4:].nbytes].view(x.dtype)
        np.testing.assert_array_equal(shared, x[4:].ravel())          # went by shared memory
        assert all(p.grad is flat for p, flat in zip(model.parameters(),
                                                     workers.own_grads.arrays))
        x2, y2 = _batch(16, seed=1)                       # slices twice the buffer: by pipe
        step_equals_alone(x2, y2)
        np.testing.assert_array_equal(shared, x[4:].ravel())          # untouched
        model.head.weight.grad = np.zeros_like(model.head.weight.data)   # not a view now
        step_equals_alone(x, y)
        assert replicas._workers is workers
        model.head = Linear(16, 5)                        # forked anew: the gradients move
        alone.head = Linear(16, 5)
        alone.head.weight.data[...] = model.head.weight.data
        step_equals_alone(x, y)
        assert replicas._workers is not workers
        assert all(p.grad is flat for p, flat in zip(model.parameters(),
                                                     replicas._workers.own_grads.arrays))
        replicas.close()


def test_worker_replicas_leave_gradients_that_live_in_another_array():
    """Gradients that are views of another's flat buffer (the MPI gradient
    buckets) stay there when the workers fork, and receive the workers' sums."""
    from minivit.parallel.distributed import GradientBuckets
    with backend.using("numpy", "float64"):
        model, replicas = _model_with_workers()
        alone = ViT(**CONFIG, seed=1)
        buckets = GradientBuckets(model.parameters(), world=None, bucket_bytes=1 << 12)
        views = [p.grad for p in model.parameters()]
        x, y = _batch(8)
        replicas.loss_and_grads(x, y, cross_entropy)
        assert all(p.grad is view for p, view in zip(model.parameters(), views))
        assert len(buckets.buffers) > 1
        alone.backward(cross_entropy(alone.forward(x), y)[1])
        flat = np.concatenate([b for b in buckets.buffers])
        np.testing.assert_allclose(flat, np.concatenate([p.grad.ravel() for p in
                                                         alone.parameters()]),
                                   rtol=1e-10, atol=1e-14)
        model.zero_grad()                                   # the same workers, again
        replicas.loss_and_grads(x, y, cross_entropy)
        assert replicas._workers is not None and all(
            p.grad is view for p, view in zip(model.parameters(), views))
        replicas.close()
        model.head = Linear(16, 5)                          # forked anew: still theirs
        replicas.loss_and_grads(x, y, cross_entropy)
        assert all(p.grad is view for p, view in zip(model.parameters()[:-2], views))
        replicas.close()


def _resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/self/status")
def test_worker_replicas_that_only_infer_hold_no_gradients():
    """The model's gradients become views of a shared block when the workers
    fork; for a model that only infers they must stay unwritten pages (no
    memory), as they were before: memory grows by the parameters' shared copy
    only, not by a gradient's worth more."""
    if not _fork_available():
        pytest.skip("worker processes need fork (Linux)")
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=5, dim=512, depth=4,
                heads=8, mlp_dim=2048, seed=0)
    params_mb = sum(p.data.nbytes for p in model.parameters()) / 2 ** 20
    x, _ = _batch(8)
    x = x.astype(np.float32)
    with minivit.no_grad():
        model.forward(x)                # kernels compiled or loaded, buffers made
    before = _resident_mb()
    replicas = Replicas(model, threads=2, processes=True)
    with minivit.no_grad():
        replicas.logits(x)
    grown = _resident_mb() - before
    replicas.close()
    assert params_mb > 40 and grown < 1.5 * params_mb, (grown, params_mb)


def _loss_refusing_label_4(logits, y):
    if (y == 4).any():
        raise ValueError("label 4 refused")
    return cross_entropy(logits, y)


def test_a_worker_process_error_or_death_reaches_the_caller():
    with backend.using("numpy", "float64"):
        model, replicas = _model_with_workers()
        x, y = _batch(8)
        y = np.where(np.arange(8) < 4, 0, 4)               # only the worker's slice has 4
        with pytest.raises(ValueError, match="label 4 refused"):
            replicas.loss_and_grads(x, y, _loss_refusing_label_4)
        y = np.zeros(8, dtype=np.int64)
        replicas.loss_and_grads(x, y, _loss_refusing_label_4)   # it still serves
        os.kill(replicas._workers.procs[0].pid, signal.SIGKILL)
        replicas._workers.procs[0].join()
        with pytest.raises(RuntimeError, match="worker process .* died"):
            replicas.loss_and_grads(x, y, cross_entropy)
        model.zero_grad()
        loss, _ = replicas.loss_and_grads(x, y, cross_entropy)   # forked anew
        assert np.isfinite(loss) and all(p.is_alive() for p in replicas._workers.procs)


def test_a_loss_that_does_not_pickle_runs_the_replicas_as_threads():
    if not _fork_available():
        pytest.skip("worker processes need fork (Linux)")
    with backend.using("numpy", "float64"):
        alone, split = ViT(**CONFIG, seed=1), ViT(**CONFIG, seed=1)
        x, y = _batch(8)
        smoothing = functools.partial(cross_entropy, label_smoothing=0.1)
        alone.backward(smoothing(alone.forward(x), y)[1])
        replicas = Replicas(split, threads=2, processes=True)
        replicas.loss_and_grads(x, y, lambda logits, y: smoothing(logits, y))
        assert replicas._workers is None and len(replicas._replicas) == 2
        for a, b in zip(alone.parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("processes", KINDS)
def test_a_replica_error_reaches_the_caller_and_small_batches_run_alone(processes):
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1)
        replicas = Replicas(model, threads=2, processes=processes)
        assert replicas.slices(7) == [(0, 7)]                 # too small to cut
        with pytest.raises(ValueError, match="image"):
            replicas.logits(np.zeros((8, 1, 9, 9)))
        with pytest.raises(ValueError, match="threads"):
            Replicas(model, threads=0)


def test_replicating_leaves_the_model_caches_and_copies_none():
    with backend.using("numpy", "float64"):
        model = ViT(**CONFIG, seed=1)
        x, y = _batch(8)
        model.forward(x)                                       # caches present
        before = {name: m.cache for name, m in model.named_modules()}
        replicas = Replicas(model, threads=2, processes=False)
        replicas._replicas_for(2, model.modules())
        copy = replicas._replicas[1]
        assert all(m.cache is None for _, m in copy.named_modules())
        assert all(m.cache is before[name] for name, m in model.named_modules())
        # what a layer lists in forward_state stays behind too (attention's maps)
        attn, attn_copy = model.blocks[0].attn, copy.blocks[0].attn
        assert "attn_probs" in attn.forward_state
        assert attn.attn_probs is not None and attn_copy.attn_probs is None
        assert copy.patch_embed._tiled is model.patch_embed._tiled is True


@pytest.mark.parametrize("processes", KINDS)
def test_the_replicas_follow_the_kernel_switch(processes, monkeypatch):
    """Workers forked while the layers ran the fast kernels run the reference
    code once the switch says so (the mode travels with every job): with every
    fast kernel a trap, a reference step still runs, and equals the model alone."""
    def trap(*args, **kwargs):
        raise AssertionError("a fast kernel ran in reference mode")

    with backend.using("numpy", "float64"):
        alone, split = ViT(**CONFIG, seed=1), ViT(**CONFIG, seed=1)
        replicas = Replicas(split, threads=2, processes=processes)
        x, y = _batch(8)
        replicas.loss_and_grads(x, y, cross_entropy)          # forks, in fast mode
        for module in (kernels.attention, kernels.gelu, kernels.layernorm, kernels.linear):
            monkeypatch.setattr(module, "forward", trap)
            monkeypatch.setattr(module, "backward", trap, raising=False)
        monkeypatch.setattr(kernels.reductions, "sum_rows", trap)
        if processes:                                          # the workers get the traps too
            replicas.close()
            with kernels.using("fast"):
                replicas._workers_for(2, cross_entropy, split.modules(), x[4:])
            assert replicas._workers is not None
        with kernels.using("reference"):
            split.zero_grad()
            loss, _ = replicas.loss_and_grads(x, y, cross_entropy)
            want, dlogits = cross_entropy(alone.forward(x), y)
            alone.backward(dlogits)
        replicas.close()
        np.testing.assert_allclose(loss, want, rtol=1e-12)
        for a, b in zip(alone.parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-14)


def _train_step_in_a_daemon(queue):
    try:
        with backend.using("numpy", "float64"):
            model = ViT(**CONFIG, seed=1)
            replicas = Replicas(model, threads=2, processes=True)
            x, y = _batch(8)
            loss, _ = replicas.loss_and_grads(x, y, cross_entropy)
            queue.put((float(loss), replicas._workers is None, len(replicas._replicas)))
    except BaseException as exc:
        queue.put(repr(exc))


def test_a_daemonic_process_runs_its_replicas_as_threads():
    """multiprocessing's daemonic processes (e.g. Pool workers) may not fork
    children of their own: there the replicas are threads."""
    if not _fork_available():
        pytest.skip("worker processes need fork (Linux)")
    import multiprocessing
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    proc = context.Process(target=_train_step_in_a_daemon, args=(queue,), daemon=True)
    proc.start()
    result = queue.get(timeout=60)
    proc.join(timeout=10)
    assert not isinstance(result, str), result
    loss, no_workers, replicas = result
    assert proc.exitcode == 0 and np.isfinite(loss) and no_workers and replicas == 2


def test_when_no_worker_process_can_start_the_replicas_are_threads(monkeypatch):
    if not _fork_available():
        pytest.skip("worker processes need fork (Linux)")
    import multiprocessing

    def refuse(self):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(multiprocessing.get_context("fork").Process, "start", refuse)
    with backend.using("numpy", "float64"):
        alone, split = ViT(**CONFIG, seed=1), ViT(**CONFIG, seed=1)
        x, y = _batch(8)
        alone.backward(cross_entropy(alone.forward(x), y)[1])
        replicas = Replicas(split, threads=2, processes=True)
        with pytest.warns(RuntimeWarning, match="could not start worker processes"):
            replicas.loss_and_grads(x, y, cross_entropy)
        assert replicas._workers is None and not replicas.processes
        for a, b in zip(alone.parameters(), split.parameters()):
            np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-14)
