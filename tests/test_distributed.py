"""Data-parallel training (minivit.parallel.distributed, minivit.parallel.mpi).

Two parts:
* in-process tests of the pieces (shards, buckets, the checks) with a fake
  communicator: they run everywhere;
* tests that launch ``mpirun -n 2`` (tests/mpi_programs.py, or the training
  command line): skipped with the reason when mpi4py or mpirun is missing.

Tolerance of "same result as one process": after one epoch of 16 steps of a
tiny ViT (tests/mpi_programs.py), 2 ranks and 1 process end with weights that
differ by at most 1e-11 in float64 (measured 1.3e-14) and at most 1e-4 in
float32 with AdamW (measured 6.3e-6; weights of size ~1), 1e-6 with SGD
(measured 1.5e-8). The difference is the order of the additions only: one
process sums 64 rows in one matmul, two ranks sum 32 each and add; AdamW
divides by sqrt(v), which magnifies the rounding of small gradients.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minivit.config import TrainConfig
from minivit.parallel import distributed
from minivit.parallel.distributed import (
    DistributedError,
    GradientBuckets,
    World,
    check_same_everywhere,
    shard_bounds,
)
from minivit.train import Trainer
from minivit.vit import ViT

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROGRAMS = os.path.join(HERE, "mpi_programs.py")


# --------------------------------------------------------------------------
# A fake communicator: N "ranks" in one process, for the pieces
# --------------------------------------------------------------------------
class FakeComm:
    """What a World needs from mpi4py's communicator, for rank ``rank`` of
    ``size``, where the other ranks' contributions are given up front."""

    def __init__(self, rank, size, others=None):
        self.rank, self.size = rank, size
        self.others = {} if others is None else others   # what the other ranks send
        self.calls = []

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def allgather(self, obj):
        self.calls.append("allgather")
        theirs = self.others.get("allgather", [obj] * (self.size - 1))
        return [obj] + list(theirs) if self.rank == 0 else list(theirs[:1]) + [obj]

    def bcast(self, obj, root=0):
        self.calls.append("bcast")
        return obj

    def Bcast(self, array, root=0):
        self.calls.append("Bcast")
        array[...] = self.others.get("Bcast", array)

    def Allreduce(self, sendbuf, recvbuf, op=None):
        self.calls.append(("Allreduce", recvbuf.size))
        recvbuf += self.others.get("Allreduce", 0)

    def Barrier(self):
        self.calls.append("Barrier")


def test_shard_bounds_cover_every_row_once():
    for n in range(0, 40):
        for size in range(1, 6):
            bounds = [shard_bounds(n, r, size) for r in range(size)]
            rows = [i for lo, hi in bounds for i in range(lo, hi)]
            assert rows == list(range(n))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_single_process_world_is_a_no_op():
    world = World(None)
    a = np.arange(3.0)
    assert world.allreduce_(a) is a and a.tolist() == [0, 1, 2]
    assert world.broadcast({"x": 1}) == {"x": 1}
    assert world.allgather(5) == [5]
    assert world.is_main and world.size == 1 and not world.distributed
    world.barrier()
    world.abort()        # nothing to abort
    with world.abort_on_error(), pytest.raises(ValueError):
        raise ValueError("raised normally on one process")


def test_gradient_buckets_are_views_and_reduce_weighted():
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                depth=2, heads=2, mlp_dim=16, seed=0)
    params = [p for p in model.parameters() if p.grad is not None]
    rng = np.random.default_rng(0)
    for p in params:
        p.grad[...] = rng.normal(size=p.grad.shape)
    before = [p.grad.copy() for p in params]
    other = {}
    comm = FakeComm(0, 2, other)
    # small buckets: several calls, one per bucket, none per parameter
    buckets = GradientBuckets(params, World(comm), bucket_bytes=2000)
    assert len(buckets.buffers) > 1
    assert len(buckets.buffers) < len(params)
    assert sum(len(b) for b in buckets.buckets) == len(params)
    for p, g in zip(params, before):                 # values kept, now views
        np.testing.assert_array_equal(p.grad, g)
        assert any(np.shares_memory(p.grad, b) for b in buckets.buffers)
    # layers add into .grad in place: the buckets see it without a copy
    params[0].grad += 1.0
    before[0] = before[0] + 1.0
    other["Allreduce"] = 2.0                         # the other rank's weighted sum
    buckets.allreduce_(0.25)
    for p, g in zip(params, before):
        np.testing.assert_allclose(p.grad, 0.25 * g + 2.0, rtol=1e-6)
    assert [c for c in comm.calls if c[0] == "Allreduce"] == \
        [("Allreduce", b.size) for b in buckets.buffers]
    assert buckets.nbytes == sum(p.grad.nbytes for p in params)


def test_check_same_everywhere_names_the_difference():
    mine = {"lr": 0.003, "images": 100}
    check_same_everywhere(World(FakeComm(0, 2)), mine)           # all equal: fine
    comm = FakeComm(0, 2, {"allgather": [{"lr": 0.001, "images": 100}]})
    with pytest.raises(DistributedError, match=r"rank 1 has lr = 0\.001, rank 0 has 0\.003") \
            as info:
        check_same_everywhere(World(comm), mine)
    assert info.value.all_ranks          # raised by every rank: no abort needed


def _tiny_trainer(world, batch_size=64, **kw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                depth=1, heads=2, mlp_dim=16, seed=0)
    return Trainer(model, (x, y), (x, y), TrainConfig(epochs=1, batch_size=batch_size),
                   out_dir=kw.pop("out_dir", "unused"), quiet=True, plots=False,
                   world=world, **kw)


def test_batch_that_does_not_split_says_what_to_change():
    with pytest.raises(DistributedError, match=r"does not split over 3 ranks.*--batch-size 126 "
                                               r"or 129") as info:
        _tiny_trainer(World(FakeComm(0, 3)), batch_size=128)
    assert info.value.all_ranks


def test_other_ranks_write_nothing(tmp_path):
    trainer = _tiny_trainer(World(FakeComm(1, 2)), batch_size=10, out_dir=tmp_path / "run")
    assert not trainer.world.is_main and trainer.tensorboard is None and not trainer.plots
    trainer.fit()
    assert not (tmp_path / "run").exists()


def test_launcher_detection_and_missing_mpi4py(monkeypatch):
    for var in distributed._SIZE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert distributed.launcher_size() == 1
    assert distributed.init() is distributed.SINGLE_PROCESS     # no MPI touched
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launcher_size() == 4
    monkeypatch.setitem(sys.modules, "mpi4py", None)             # as if not installed
    with pytest.raises(DistributedError, match=r"one of 4 .*mpi4py is not installed.*"
                                               r"pip install -e '\.\[mpi\]'"):
        distributed.init()
    monkeypatch.delenv("PMI_SIZE")
    with pytest.raises(DistributedError, match=r"--distributed, but mpi4py"):
        distributed.init(require=True)


def test_cli_distributed_without_mpi4py_names_the_extra(monkeypatch, capsys):
    from minivit import cli
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    for var in distributed._SIZE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert cli.run(["--distributed", "--epochs", "1"]) == 1
    assert "pip install -e '.[mpi]'" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Under mpirun
# --------------------------------------------------------------------------
def _mpirun():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return beside if os.path.exists(beside) else shutil.which("mpirun")


MPIRUN = _mpirun()
needs_mpi = pytest.mark.skipif(
    MPIRUN is None, reason="needs mpi4py and mpirun: pip install -e '.[mpi]'")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MINIVIT_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONPATH=ROOT)
    for var in distributed._SIZE_VARIABLES:
        env.pop(var, None)
    return env


def _run(cmd, timeout=120, check=True):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _train(out, ranks, *flags):
    cmd = [sys.executable, PROGRAMS, "train", str(out), *flags]
    if ranks == 0:
        return _run(cmd + ["--single"])
    return _run([MPIRUN, "-n", str(ranks), *cmd])


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k.startswith("model/")}


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


@needs_mpi
@pytest.mark.parametrize("dtype, optimizer, tolerance", [
    ("float64", "adamw", 1e-11),
    ("float32", "adamw", 1e-4),
    ("float32", "sgd", 1e-6),
])
def test_two_ranks_train_the_same_model_as_one_process(tmp_path, dtype, optimizer, tolerance):
    flags = ["--dtype", dtype, "--optimizer", optimizer, "--lr", "0.01", "--plots"]
    _train(tmp_path / "one", 0, *flags)
    _train(tmp_path / "two", 2, *flags, "--bucket-bytes", "4096")
    one, two = _weights(tmp_path / "one/last.npz"), _weights(tmp_path / "two/last.npz")
    difference = _max_difference(one, two)
    assert difference <= tolerance
    assert difference > 0 or dtype == "float64"      # two runs really happened
    ref = json.load(open(tmp_path / "one/rank0.json"))
    ranks = [json.load(open(tmp_path / f"two/rank{r}.json")) for r in (0, 1)]
    assert [r["size"] for r in ranks] == [2, 2]
    assert ranks[0]["buckets"] > 1                    # several flat buckets were reduced
    for r in ranks:                                   # sharded evaluation, summed counts
        assert r["predictions"] == ref["predictions"]
        assert r["history"][-1]["test_acc"] == ref["history"][-1]["test_acc"]
        assert r["history"][-1]["train_acc"] == ref["history"][-1]["train_acc"]
        assert abs(r["history"][-1]["train_loss"] - ref["history"][-1]["train_loss"]) < 1e-5
    assert ref["history"][-1]["test_acc"] > 0.4       # it learned something (chance 0.25)
    # rank 0 alone wrote: one metrics line per epoch, plots, no stray files
    written = sorted(os.listdir(tmp_path / "two"))
    assert written == ["best.npz", "confusion_matrix.png", "curves.png", "last.npz",
                       "metrics.jsonl", "rank0.json", "rank1.json"]
    assert len(open(tmp_path / "two/metrics.jsonl").read().splitlines()) == 1


@needs_mpi
def test_resume_on_another_number_of_ranks(tmp_path):
    flags = ["--epochs", "2", "--dtype", "float64"]
    _train(tmp_path / "uninterrupted", 0, *flags)
    _train(tmp_path / "switched", 2, *flags, "--stop-after", "1")     # epoch 1 on 2 ranks
    _train(tmp_path / "switched", 0, *flags, "--resume")              # epoch 2 on 1
    _train(tmp_path / "back", 0, *flags, "--stop-after", "1")         # epoch 1 on 1
    _train(tmp_path / "back", 2, *flags, "--resume")                  # epoch 2 on 2
    reference = _weights(tmp_path / "uninterrupted/last.npz")
    for run in ("switched", "back"):
        assert _max_difference(reference, _weights(tmp_path / run / "last.npz")) < 1e-11
        history = json.load(open(tmp_path / run / "rank0.json"))["history"]
        assert [h["epoch"] for h in history] == [1, 2]


@needs_mpi
def test_a_rank_that_raises_stops_the_job(tmp_path):
    start = time.monotonic()
    proc = _run([MPIRUN, "-n", "2", sys.executable, PROGRAMS, "raise"], timeout=60,
                check=False)
    assert proc.returncode != 0
    assert time.monotonic() - start < 45
    assert "rank 1 of 2 failed, stopping all ranks" in proc.stderr
    assert "rank 1 failed on purpose" in proc.stderr
    assert "allreduce finished" not in proc.stdout


@needs_mpi
def test_a_rank_that_is_killed_stops_the_job():
    """No code of ours runs in a killed process: the launcher (MPICH's hydra
    here, likewise Open MPI's mpirun and srun) notices and stops the rest."""
    start = time.monotonic()
    proc = _run([MPIRUN, "-n", "2", sys.executable, PROGRAMS, "kill", "--timeout", "0"],
                timeout=60, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - start < 45
    assert "allreduce finished" not in proc.stdout


@needs_mpi
def test_a_rank_that_hangs_is_caught_by_the_timeout():
    start = time.monotonic()
    proc = _run([MPIRUN, "-n", "2", sys.executable, PROGRAMS, "hang", "--timeout", "2"],
                timeout=90, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60             # rank 1 sleeps 120 s
    assert "rank 0: Allreduce of 4 values has not finished after 2 s" in proc.stderr


# --------------------------------------------------------------------------
# The training command line under mpirun (real MNIST, where available)
# --------------------------------------------------------------------------
def _mnist_dir():
    path = os.environ.get("MINIVIT_DATA")
    return path if path and os.path.isdir(path) else None


needs_mnist = pytest.mark.skipif(_mnist_dir() is None,
                                 reason="set MINIVIT_DATA to the MNIST files")
TRAIN = os.path.join(ROOT, "examples", "train_mnist.py")
QUICK = ["--train-subset", "512", "--test-subset", "200", "--epochs", "1", "--quiet"]


@needs_mpi
@needs_mnist
def test_cli_under_mpirun(tmp_path):
    proc = _run([MPIRUN, "-n", "2", sys.executable, TRAIN, *QUICK, "--out",
                 str(tmp_path / "run")])
    assert proc.stdout.count("final test accuracy") == 1           # rank 0 speaks
    assert (tmp_path / "run/last.npz").exists()


@needs_mpi
@needs_mnist
def test_cli_rejects_a_batch_that_does_not_split(tmp_path):
    proc = _run([MPIRUN, "-n", "2", sys.executable, TRAIN, *QUICK, "--batch-size", "127",
                 "--out", str(tmp_path / "run")], check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("does not split over 2 ranks") == 1
    assert "--batch-size 126 or 128" in proc.stderr


@needs_mpi
@needs_mnist
def test_cli_ranks_with_different_flags_fail_at_start(tmp_path):
    common = [sys.executable, TRAIN, *QUICK, "--out", str(tmp_path / "run")]
    proc = _run([MPIRUN, "-n", "1", *common, "--lr", "0.003", ":",
                 "-n", "1", *common, "--lr", "0.001"], check=False, timeout=120)
    assert proc.returncode != 0
    assert "the ranks were started with different settings or data" in proc.stderr
    assert not (tmp_path / "run/last.npz").exists()


# --------------------------------------------------------------------------
# The GPU path, on the fake device (tests/fake_device.py)
# --------------------------------------------------------------------------
def test_gpu_gradients_are_reduced_on_the_device(monkeypatch, tmp_path):
    """On the cupy backend the buckets are device arrays and go to NCCL, never
    through the host; the rest of a data-parallel epoch keeps to the host/device
    rules. (Real NCCL runs only on a machine with GPUs.)"""
    import fake_device

    reduced = []

    def fake_nccl_allreduce_(self, array):
        assert isinstance(array, fake_device.DeviceArray), type(array)
        reduced.append(array.size)
        array *= 2          # the other rank sent the same weighted gradients

    monkeypatch.setattr(World, "_nccl_allreduce_", fake_nccl_allreduce_)
    with fake_device.installed():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 3, size=40)
        model = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=8,
                    depth=1, heads=2, mlp_dim=16, seed=0)
        trainer = Trainer(model, (x, y), (x, y), TrainConfig(epochs=1, batch_size=16),
                          out_dir=tmp_path, quiet=True, plots=False,
                          world=World(FakeComm(0, 2)))
        assert all(isinstance(b, fake_device.DeviceArray) for b in trainer.buckets.buffers)
        trainer.fit()
    assert reduced == [trainer.buckets.buffers[0].size] * trainer.steps_per_epoch
    assert (tmp_path / "last.npz").exists()


@needs_mpi
def test_the_scaling_benchmark_runs(tmp_path):
    out = tmp_path / "rows.json"
    _run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_distributed.py"),
          "--steps", "2", "--warmup", "1", "--json", str(out)])
    rows = json.load(open(out))
    assert [(r["ranks"], r["threads_per_rank"]) for r in rows] == [(1, 2), (1, 1), (2, 1)]
    assert rows[2]["gradient_bytes"] == 205962 * 4          # mnist-s, float32
    assert all(r["images_per_s"] > 0 for r in rows) and rows[2]["allreduce_ms"] > 0
