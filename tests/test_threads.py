"""minivit.parallel.threads: parallel_rows runs a kernel on blocks of rows in
threads and equals one call; the layers agree with themselves run serially."""

import numpy as np
import pytest
from helpers import randn

from minivit import backend
from minivit.parallel import threads


def test_parallel_rows_splits_and_matches(monkeypatch):
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "3")
    x = np.arange(70.0).reshape(7, 10)
    out = np.zeros_like(x)
    seen = []

    def kernel(a, b):
        seen.append(a.shape[0])
        np.multiply(a, 2.0, out=b)

    threads.parallel_rows(kernel, x, out)
    np.testing.assert_array_equal(out, 2 * x)
    assert len(seen) > 1 and sum(seen) == 7


def test_ran_recently_after_threaded_work_only(monkeypatch):
    monkeypatch.setattr(threads, "_last_parallel", float("-inf"))
    assert not threads.ran_recently()
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "1")            # one thread: nothing shared out
    threads.parallel_shares(lambda lo, hi: None, 4)
    assert not threads.ran_recently()
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    threads.parallel_shares(lambda lo, hi: None, 4)
    assert threads.ran_recently()
    monkeypatch.setattr(threads, "RECENT_SECONDS", 0.0)
    assert not threads.ran_recently()


def test_parallel_rows_cache_blocks_and_shares(monkeypatch):
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(threads, "BLOCK_BYTES", 8 * 10 * 2)         # two float64 rows
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    x = np.arange(120.0).reshape(12, 10)
    for cache_blocks, expected in ((True, [2] * 6), (False, [6, 6])):
        seen, out = [], np.zeros_like(x)

        def kernel(a, b):
            seen.append(a.shape[0])
            np.multiply(a, 2.0, out=b)

        threads.parallel_rows(kernel, x, out, cache_blocks=cache_blocks)
        np.testing.assert_array_equal(out, 2 * x)
        assert sorted(seen) == expected


def test_linear_in_threads_equals_one_matmul(monkeypatch):
    from minivit.layers import Linear
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "3")
    layer = Linear(6, 5)
    layer.bias.data[...] = np.arange(5, dtype=np.float32)
    for x in (randn(2, 7, 6), randn(1, 3, 6)):        # many rows: threads; few: one call
        np.testing.assert_allclose(layer.forward(x), x @ layer.weight.data.T + layer.bias.data,
                                   rtol=1e-6, atol=1e-6)


def test_parallel_rows_reraises_kernel_errors(monkeypatch):
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")

    def kernel(a):
        raise FloatingPointError("boom")

    with pytest.raises(FloatingPointError, match="boom"):
        threads.parallel_rows(kernel, np.zeros((4, 2)))


def test_bad_thread_count(monkeypatch):
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="MINIVIT_NUM_THREADS"):
        threads.num_threads()


def test_threaded_layers_equal_serial_and_pass_gradcheck(monkeypatch):
    """The threaded kernels agree with the serial run (to rounding: SIMD loops
    may group a block's additions differently), and the whole model still
    passes the gradient check on the threaded path."""
    from helpers import randomize_parameters

    from minivit.gradcheck import assert_gradients_ok, check_module
    from minivit.vit import ViT

    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    with backend.using("numpy", dtype="float64"):
        model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2,
                    heads=2, mlp_dim=12)
        randomize_parameters(model, scale=0.4)
        x = np.random.default_rng(0).standard_normal((5, 2, 8, 8))
        dout = np.random.default_rng(1).standard_normal((5, 3))
        results = []
        for threshold in (1 << 30, 0):            # serial, then every kernel threaded
            monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", threshold)
            model.zero_grad()
            logits = model.forward(x)
            dx = model.backward(dout)
            results.append((logits, dx, [p.grad.copy() for p in model.parameters()]))
        (l0, dx0, g0), (l1, dx1, g1) = results
        np.testing.assert_allclose(l1, l0, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-14)
        for a, b in zip(g0, g1):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
        assert_gradients_ok(check_module(model, x, samples=15))


def test_blas_threads_are_restored_and_parallel_rows_is_serial_inside():
    seen = []

    def kernel(a, out):
        seen.append(len(a))
        out[...] = a * 2

    pytest.importorskip("threadpoolctl")

    def blas():                       # NumPy's BLAS, as threads found it
        return [c.get_num_threads() for c in threads._blas_controllers]

    with threads.blas_threads(1):
        assert blas() and all(n == 1 for n in blas())
    before = blas()
    with threads.blas_threads(1):
        assert all(n == 1 for n in blas())
    assert blas() == before
    x = np.ones((64, 8192), dtype=np.float32)
    out = np.empty_like(x)
    with threads.serial():
        threads.parallel_rows(kernel, x, out)
    np.testing.assert_array_equal(out, 2 * x)
    assert sum(seen) == 64 and max(seen) < 64                 # blocks, one thread


def test_blas_is_warmed_in_each_pool_thread_and_not_on_the_gpu(monkeypatch):
    import threading
    warmed, worked = set(), set()

    def record():
        warmed.add(threading.get_ident())

    def share(lo, hi):
        worked.add(threading.get_ident())
        threading.Event().wait(0.05)          # hold the thread so each share gets its own

    monkeypatch.setattr(threads, "warm_blas", record)
    monkeypatch.setattr(threads, "_pool", None)                # a fresh pool, with the recorder
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    threads.parallel_shares(share, 2)
    assert len(worked) == 2 and worked <= warmed
    threads._pool.shutdown()
    monkeypatch.undo()                        # the real warm-up again, and the module's own pool

    operands, real_ones = [], np.ones
    monkeypatch.setattr(np, "ones", lambda *a, **k: operands.append(a[0]) or real_ones(*a, **k))
    threads.warm_blas()
    assert operands == [(512, 256), (256, 512)]          # a product with hundreds of columns
    operands.clear()
    monkeypatch.setattr(backend, "name", "cupy")         # the GPU's BLAS needs none of this
    threads.warm_blas()
    assert operands == []
