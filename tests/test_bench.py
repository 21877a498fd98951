"""The benchmark runs (without and, where installed, with PyTorch) and its
FLOP count is right."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench_train  # noqa: E402
import matmul_floor  # noqa: E402


def test_matmul_flops_by_hand():
    cfg = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=6, depth=1,
               heads=2, mlp_dim=10)
    n, t, d, m = 4, 5, 6, 10
    patch = 2 * n * (2 * 16) * d
    block = 2 * t * d * 3 * d + 2 * (2 * t * t * d) + 2 * t * d * d + 2 * (2 * t * d * m)
    head = 2 * d * 3
    assert matmul_floor.matmul_flops({**cfg, "pool": "mean"}, batch_size=7) == \
        7 * (patch + block + head)
    # pool "cls": the last block computes one query token after its qkv
    cls_block = 2 * t * d * 3 * d + 2 * (2 * 1 * t * d) + 2 * 1 * d * d + 2 * (2 * 1 * d * m)
    assert matmul_floor.matmul_flops(cfg, batch_size=7) == 7 * (patch + cls_block + head)
    assert matmul_floor.matmul_flops({**cfg, "depth": 3}, batch_size=1) == \
        patch + 2 * block + cls_block + head


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_matmul_shapes_of_a_training_step(pool):
    """The backward's products: dW and dx for every Linear (each as costly as
    its forward), four per attention (twice its forward's two), and no dx for
    the patch projection: 3x the forward FLOPs less that one product."""
    cfg = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=6, depth=2,
               heads=2, mlp_dim=10, pool=pool)

    def flops(shapes):
        return sum(2 * count * m * k * n for count, m, k, n in shapes)

    forward = matmul_floor.matmul_shapes(cfg, batch_size=5)
    step = matmul_floor.matmul_shapes(cfg, batch_size=5, train=True)
    assert step[:len(forward)] == forward
    patch_dx = 2 * (5 * 4) * 6 * (2 * 16)
    assert flops(step) == 3 * flops(forward) - patch_dx
    assert flops(forward) == matmul_floor.matmul_flops(cfg, batch_size=5)
    # Linears: the patch projection, qkv, proj, fc1 and fc2 of each block, the head;
    # two attention products per block forward, four backward
    linears, attention = 1 + 4 * 2 + 1, 2 * 2
    assert len(forward) == linears + attention
    assert len(step) - len(forward) == 2 * linears - 1 + 2 * attention


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy-only", "with-torch"])
def test_benchmark_smoke(tmp_path, capsys, monkeypatch, use_torch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        monkeypatch.setenv(var, "2")      # the benchmark sets these; restore after
    if use_torch:
        pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    # a small mnist-s batch, made its own size (a reference-second is defined at
    # mnist-s's batch size only)
    monkeypatch.setitem(bench_train.CONFIGS, "mnist-s",
                        dict(bench_train.CONFIGS["mnist-s"], batch_size=8))
    argv = ["--config", "mnist-s", "--reps", "1", "--warmup", "0", "--json", str(out)]
    if not use_torch:
        argv.append("--no-torch")
    results = bench_train.main(argv)
    entry = results["configs"]["mnist-s"]
    assert entry["train"]["images_per_s"] > 0 and entry["infer"]["images_per_s"] > 0
    assert 0 < entry["train"]["fraction_of_matmul"]
    assert entry["peak_train_memory_mb"] > 0
    assert ("ratio_train" in entry) == use_torch
    # the matmul floor: the step's products alone, and the ratio they allow
    floor = entry["matmul_floor"]
    assert floor["train"]["images_per_s"] > 0 and floor["infer"]["images_per_s"] > 0
    if use_torch:
        for phase in ("train", "infer"):
            assert entry[f"bound_{phase}"] == pytest.approx(
                floor[phase]["images_per_s"] / entry["torch"][phase]["images_per_s"])
    else:
        assert "bound_train" not in entry
    assert json.loads(out.read_text())["configs"]["mnist-s"]["batch_size"] == 8
    table = capsys.readouterr().out
    assert "mnist-s" in table and "GFLOP/s" in table and "matmuls alone" in table
    # the facts that tell machines apart: CPU model and NumPy's SIMD extensions
    machine = results["machine"]
    assert machine["cpu_model"] and machine["cpu_model"] in table
    assert "SIMD: baseline" in table and isinstance(machine["numpy_simd"]["found"], list)
    assert ("AVX-512 yes" in table) == machine["numpy_simd"]["avx512f"]
    # reference-seconds: wall seconds x (PyTorch mnist-s img/s in this run) / 4600
    torch_img_s = entry["torch"]["train"]["images_per_s"] if use_torch else None
    if use_torch:
        scale = results["reference_seconds_per_wall_second"]
        assert scale == pytest.approx(torch_img_s / 4600)
        assert f"wall seconds x {torch_img_s:.0f} / 4600 = wall seconds x {scale:.3f}" in table
    else:
        assert "reference_seconds_per_wall_second" not in results
        assert "reference-seconds" not in table


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy-only", "with-torch"])
def test_inference_benchmark_smoke(tmp_path, capsys, monkeypatch, use_torch):
    """bench_inference on the smallest preset: throughput, the logits agree
    with PyTorch's, and the memory of a fresh process is measured."""
    import bench_inference
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        monkeypatch.setenv(var, "2")
    if use_torch:
        pytest.importorskip("torch")
    else:
        monkeypatch.setitem(sys.modules, "torch", None)     # as if not installed
    argv = ["--model", "vit_tiny_patch16_224", "--batch", "1", "8", "--reps", "1",
            "--warmup", "0", "--json", str(tmp_path / "inf.json")]
    if not use_torch:
        argv.append("--no-memory")
    results = bench_inference.main(argv)
    for batch in (1, 8):
        entry = results["batches"][batch]
        assert entry["minivit"]["images_per_s"] > 0
        assert ("ratio" in entry) == use_torch
        assert ("replicas" in entry) == (batch == 8)         # 8 images: two slices of 4
        assert ("ratio_replicas" in entry) == (batch == 8 and use_torch)
        assert entry["matmuls"]["images_per_s"] > 0
        if use_torch:
            assert entry["max_abs_logit_diff"] < 1e-4
            assert entry["bound"] == pytest.approx(
                entry["matmuls"]["images_per_s"] / entry["torch"]["images_per_s"])
    if use_torch:
        for who in ("minivit", "torch"):
            m = results["memory"][who]
            assert 0 < m["loaded_mb"] <= m["peak_mb"] + 1
    table = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in table and "SIMD" in table
    assert json.loads((tmp_path / "inf.json").read_text())["model"] == "vit_tiny_patch16_224"


def test_no_reference_seconds_at_another_batch_size(monkeypatch):
    pytest.importorskip("torch")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        monkeypatch.setenv(var, "2")
    results = bench_train.main(["--config", "mnist-s", "--batch-size", "4", "--reps", "1",
                                "--warmup", "0"])
    assert "ratio_train" in results["configs"]["mnist-s"]
    assert "reference_seconds_per_wall_second" not in results


def test_matmuls_alone_runs_every_copy_and_ends_them():
    """The matmul floor runs in as many processes at once as the replicas
    (this one and forked ones), which close() ends."""
    import multiprocessing
    before = set(multiprocessing.active_children())
    run = matmul_floor.matmuls_alone([(1, 8, 4, 3), (2, 3, 5, 2)], copies=3)
    started = set(multiprocessing.active_children()) - before
    assert len(started) == (2 if sys.platform == "linux" else 0)
    run()
    run()
    run.close()
    assert not any(p.is_alive() for p in started)
    shapes = [(1, 8, 4, 3), (2, 3, 5, 2), (1, 8, 4, 3)]     # 2-D, stacked, the first again
    operands = matmul_floor._operands(shapes)
    assert operands[0] is operands[2]                   # one set per distinct shape
    assert [out.shape for _, _, out in operands] == [(8, 3), (2, 3, 2), (8, 3)]


def test_matmul_floor_shares_the_products_between_the_cores(monkeypatch):
    """Several slices: each slice's products on a core of its own. One slice:
    all products in one process, or each split over the cores (by matrices
    when stacked, else by rows), whichever runs faster."""
    cfg = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=6, depth=1,
               heads=2, mlp_dim=10)
    calls = []
    real = matmul_floor.matmuls_alone

    def spy(shapes, copies=1):
        calls.append((shapes, copies))
        return real(shapes, copies)

    monkeypatch.setattr(matmul_floor, "matmuls_alone", spy)
    for run in (matmul_floor.matmul_floor(cfg, [(0, 4), (4, 9)], threads=2, train=True),
                matmul_floor.matmul_floor(cfg, [(0, 3)], threads=2)):
        run()
        run.close()
    # one slice: both ways are built, the faster kept
    (sliced, copies_sliced), (whole, copies_whole), (split, copies_split) = calls
    assert copies_sliced == 2 and sliced == matmul_floor.matmul_shapes(cfg, 5, train=True)
    assert copies_whole == 1 and whole == matmul_floor.matmul_shapes(cfg, 3)
    assert copies_split == 2 and len(split) == len(whole)
    for (count, m, k, n), share in zip(whole, split):
        assert share == (((count + 1) // 2, m, k, n) if count >= 2 else (1, (m + 1) // 2, k, n))


def test_inference_benchmark_on_a_from_scratch_configuration(capsys, monkeypatch):
    """bench_inference also times bench_train.py's sizes (one-channel mnist-s
    here), and the logits agree with PyTorch's twin where torch is installed."""
    import bench_inference
    monkeypatch.setenv("MINIVIT_NUM_THREADS", "2")
    results = bench_inference.main(["--model", "mnist-s", "--batch", "1", "8", "--reps", "1",
                                    "--warmup", "0", "--no-memory"])
    assert results["params"] > 0
    for batch in (1, 8):
        entry = results["batches"][batch]
        assert entry["minivit"]["images_per_s"] > 0
        if "max_abs_logit_diff" in entry:
            assert entry["max_abs_logit_diff"] < 1e-4
    assert "mnist-s" in capsys.readouterr().out
