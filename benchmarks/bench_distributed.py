"""Data-parallel throughput: 1 process against N MPI ranks, and the allreduce's share.

    python benchmarks/bench_distributed.py                   # the table below, for mnist-s
    python benchmarks/bench_distributed.py --config bench-m --ranks 1 2 4
    mpirun -n 2 python benchmarks/bench_distributed.py --worker --threads 1   # one row

Without ``--worker`` it launches, one after the other (never side by side):
one process with ``--threads`` (default 2) BLAS/kernel threads, then
``mpirun -n R`` for each R of ``--ranks`` with one thread per rank, and
prints one row each: global images/s of training steps (forward, backward,
gradient allreduce, clipping, AdamW) at the same global batch, the median
step, the allreduce time per step (including waiting for the slowest rank),
and the gradient bytes each rank sends into the allreduce per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from common import CONFIGS, cpu_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="mnist-s", choices=tuple(CONFIGS))
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the config's)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2],
                   help="rank counts to launch with mpirun (1 thread each)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads of the single-process baseline (with --worker: of each rank)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps")
    p.add_argument("--worker", action="store_true", help="run the steps in this process")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    return p.parse_args(argv)


def worker(args) -> dict | None:
    """Time training steps in this process (one rank of an mpirun, or alone)."""
    import numpy as np

    from minivit import backend
    from minivit.parallel import distributed
    from minivit.loss import cross_entropy
    from minivit.optim import AdamW, clip_grad_norm_, param_groups_weight_decay
    from minivit.vit import ViT

    world = distributed.init()
    cfg = CONFIGS[args.config]
    batch = args.batch_size or cfg["batch_size"]
    m = cfg["model"]
    model = ViT(**m, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, m["in_channels"], m["image_size"], m["image_size"]))
    y = rng.integers(0, m["num_classes"], size=batch)
    lo, hi = distributed.shard_bounds(batch, world.rank, world.size)
    xb = backend.to_device(x[lo:hi].astype(np.float32))
    yb = backend.to_device(y[lo:hi])
    params = model.parameters()
    buckets = distributed.GradientBuckets(params, world) if world.distributed else None
    optimizer = AdamW(param_groups_weight_decay(model.named_parameters(), 0.05), lr=1e-3)

    def step():
        optimizer.zero_grad()
        logits = model.forward(xb)
        _, dlogits = cross_entropy(logits, yb)
        model.backward(dlogits, input_grad=False)
        if buckets is not None:
            buckets.allreduce_((hi - lo) / batch)
        clip_grad_norm_(params, 1.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    world.barrier()
    times, comm = [], []
    for _ in range(args.steps):
        before = world.comm_seconds
        start = time.perf_counter()
        step()
        backend.synchronize()
        times.append(time.perf_counter() - start)
        comm.append(world.comm_seconds - before)
    # the slowest rank sets the pace: take every rank's median, report the max
    step_s = max(world.allgather(statistics.median(times)))
    comm_s = max(world.allgather(statistics.median(comm)))
    if not world.is_main:
        return None
    return dict(config=args.config, ranks=world.size, threads_per_rank=args.threads,
                global_batch=batch, images_per_s=batch / step_s, step_ms=1e3 * step_s,
                allreduce_ms=1e3 * comm_s,
                allreduce_share=comm_s / step_s,
                gradient_bytes=0 if buckets is None else buckets.nbytes)


def _threads_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        env[var] = str(threads)
    return env


def launch(args) -> list[dict]:
    common = [os.path.abspath(__file__), "--worker", "--config", args.config,
              "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.batch_size:
        common += ["--batch-size", str(args.batch_size)]
    runs = [([sys.executable, *common, "--threads", str(args.threads)], args.threads)]
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    mpirun = mpirun if os.path.exists(mpirun) else shutil.which("mpirun")
    if mpirun is None:
        print("no mpirun: install the [mpi] extra to time several ranks", file=sys.stderr)
    else:
        runs += [([mpirun, "-n", str(r), sys.executable, *common, "--threads", "1"], 1)
                 for r in args.ranks]
    rows = []
    for cmd, threads in runs:
        out = subprocess.run(cmd + ["--json", "-"], env=_threads_env(threads), check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        for var, value in _threads_env(args.threads).items():
            os.environ[var] = value         # before NumPy's BLAS starts
        row = worker(args)
        if row is not None:
            print(json.dumps(row) if args.json == "-" else row)
        return
    rows = launch(args)
    print(f"{args.config}, global batch {rows[0]['global_batch']}, {os.cpu_count()} cores "
          f"({cpu_model()}), float32, median of "
          f"{args.steps} steps")
    print(f"{'processes':>9} {'threads each':>12} {'img/s':>8} {'step ms':>8} "
          f"{'allreduce ms':>12} {'share':>6} {'grad MB/step':>12} {'speed-up':>8}")
    base = rows[0]["images_per_s"]
    for r in rows:
        print(f"{r['ranks']:>9} {r['threads_per_rank']:>12} {r['images_per_s']:>8.0f} "
              f"{r['step_ms']:>8.1f} {r['allreduce_ms']:>12.2f} "
              f"{100 * r['allreduce_share']:>5.1f}% {r['gradient_bytes'] / 2**20:>12.2f} "
              f"{r['images_per_s'] / base:>7.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
