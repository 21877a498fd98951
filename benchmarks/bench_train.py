"""Training and inference throughput of minivit, against PyTorch in the same run.

    python benchmarks/bench_train.py                      # all configurations, 2 threads
    python benchmarks/bench_train.py --config bench-m --reps 7 --json out.json
    MINIVIT_BACKEND=cupy python benchmarks/bench_train.py --batch-size 256

For each configuration: a training step (forward + backward + AdamW step) and
an inference forward (eval mode, ``minivit.no_grad()``), timed after warm-up as the median (and min-max) of
``--reps`` repetitions. Where torch is installed, the same model is built in
PyTorch from minivit's ``state_dict`` and timed, in turns with minivit, with the
same number of threads in a process of its own with glibc's malloc as it is
(``torch_process.py``: minivit keeps freed memory in its process,
``minivit.memory``, and PyTorch's users do not), and the ratio minivit /
PyTorch is printed. Also
printed: achieved GFLOP/s (matmul FLOPs of the model, counted analytically),
the fraction of a large float32 matmul's GFLOP/s measured in this run, and
the peak memory of a training step on the whole batch in one process
(tracemalloc on NumPy, the memory pool on CuPy; replicas split the same
activations between them).

A second table gives each step's matmul floor: the step's matmuls alone
(``matmul_shapes``, the products minivit runs, on this BLAS; each replica's
slice of the batch on a core of its own, all at once, as the replicas run),
timed in turns with the two steps; the images/s a step would reach if
everything else took no time, that as a ratio to PyTorch's whole step
("bound": the best ratio these matmuls allow), and their share of minivit's
own step (the rest is elementwise work, softmax, LayerNorm, AdamW, Python).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CONFIGS, EXTRA_CONFIGS, interleaved, machine_info,  # noqa: E402
                    measure_peak_memory, mnist_default_config, print_machine, summarise,
                    time_it, timer, write_json)
from matmul_floor import matmul_flops, matmul_floor  # noqa: E402

__all__ = ["main"]

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append",
                   help="configuration(s) to run: mnist-s, bench-m, vit-s16, mnist-default "
                        "(default: these), or vit-b16")
    p.add_argument("--batch-size", type=int, default=None, help="override every batch size")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (>= 5 recommended)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up repetitions")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for BLAS, minivit's kernels and PyTorch alike "
                        "(default 2, the CI machine's cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Thread counts must be fixed before NumPy's BLAS starts.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    from minivit import backend  # noqa: PLC0415

    from torch_process import TorchProcess, torch_available  # noqa: PLC0415

    pytorch = None                                  # PyTorch's side, in a process of its own
    if not args.no_torch and torch_available():
        pytorch = TorchProcess(args.threads)
    on_gpu = backend.name == "cupy"
    torch_device = "cuda" if (on_gpu and pytorch and pytorch.info["cuda"]) else "cpu"
    if on_gpu and pytorch is not None and torch_device == "cpu":
        pytorch.close()
        pytorch = None  # comparing a GPU with PyTorch on the CPU would mislead
    try:
        return _run(args, pytorch, torch_device)
    finally:
        if pytorch is not None:
            pytorch.close()


def _run(args, pytorch, torch_device):
    import numpy as np  # noqa: PLC0415

    import minivit  # noqa: PLC0415
    from minivit import backend  # noqa: PLC0415
    from minivit.loss import cross_entropy  # noqa: PLC0415
    from minivit.optim import AdamW, param_groups_weight_decay  # noqa: PLC0415
    from minivit.parallel.replicas import Replicas  # noqa: PLC0415
    from minivit.vit import ViT  # noqa: PLC0415

    on_gpu = backend.name == "cupy"

    configs = dict(CONFIGS)
    default = mnist_default_config()
    if default is not None:
        configs["mnist-default"] = default
    names = args.config or list(configs)
    configs.update(EXTRA_CONFIGS)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {list(configs)}")

    xp = backend.xp
    rng = np.random.default_rng(0)

    # The ceiling: a large float32 matmul, measured now, on this machine.
    size = 4096 if on_gpu else 2048
    a = backend.to_device(rng.standard_normal((size, size)), "float32")
    mm_times = time_it(lambda: a @ a, reps=5, warmup=2, sync=backend.synchronize)
    matmul_gflops = 2 * size ** 3 / statistics.median(mm_times) / 1e9
    torch_matmul_gflops = None
    if pytorch is not None:
        torch_matmul_gflops = pytorch.matmul_gflops(size, torch_device)

    machine = machine_info(pytorch and pytorch.info, args.threads, torch_device)
    results = dict(machine=machine, matmul_gflops=matmul_gflops,
                   torch_matmul_gflops=torch_matmul_gflops, matmul_size=size, configs={})

    for name in names:
        cfg = configs[name]
        batch = args.batch_size or cfg["batch_size"]
        mcfg = cfg["model"]
        model = ViT(**mcfg, seed=0)
        optimizer = AdamW(param_groups_weight_decay(model.named_parameters(), 0.05), lr=1e-3)
        x_host = rng.standard_normal((batch, mcfg["in_channels"], mcfg["image_size"],
                                      mcfg["image_size"])).astype(np.float32)
        y_host = rng.integers(0, mcfg["num_classes"], size=batch)
        x, y = backend.to_device(x_host), backend.to_device(y_host)

        replicas = Replicas(model)                # as the Trainer: a replica per core

        def train_step():
            model.zero_grad()
            replicas.loss_and_grads(x, y, cross_entropy)
            optimizer.step()

        def infer():
            with minivit.no_grad():               # keeps nothing for backward
                replicas.logits(x)

        flops = matmul_flops(mcfg, batch)
        # Each contestant: phase -> (timer(reps, warmup) -> seconds, set its mode).
        ours = {"train": (partial(timer, train_step, backend.synchronize), model.train),
                "infer": (partial(timer, infer, backend.synchronize), model.eval)}
        steps = {"minivit": ours}
        if pytorch is not None:
            pytorch.load(model, x_host, y_host, torch_device)
            steps["torch"] = {phase: (partial(pytorch.time, phase),
                                      partial(pytorch.mode, train))
                              for phase, train in (("train", True), ("infer", False))}
        # The floor: the step's matmuls alone (see ``matmul_floor``).
        floor_runs = {"train": matmul_floor(mcfg, replicas.slices(batch), args.threads,
                                            train=True),
                      "infer": matmul_floor(mcfg, replicas.slices(batch), args.threads)}
        steps["matmuls"] = {phase: (partial(timer, run, backend.synchronize), lambda: None)
                            for phase, run in floor_runs.items()}
        # The contestants take turns (see ``interleaved``), so that a slow
        # moment of the machine hurts all alike instead of whichever ran then.
        timings = {}
        for phase in ("train", "infer"):
            for who in steps:
                steps[who][phase][1]()
            times = interleaved({who: s_[phase][0] for who, s_ in steps.items()},
                                args.reps, args.warmup)
            for who, t in times.items():
                timings.setdefault(who, {})[phase] = summarise(t, batch)
        floor = timings.pop("matmuls")
        for run in floor_runs.values():
            run.close()
        model.train()

        def whole_batch_step():                   # the model alone: all activations here
            model.zero_grad()
            model.backward(cross_entropy(model.forward(x), y)[1], input_grad=False)
            optimizer.step()

        peak = measure_peak_memory(whole_batch_step, backend)

        entry = dict(model=mcfg, batch_size=batch, params=model.num_parameters(),
                     train=timings["minivit"]["train"], infer=timings["minivit"]["infer"],
                     train_flops_per_step=3 * flops, infer_flops_per_step=flops,
                     peak_train_memory_mb=peak / 2 ** 20, matmul_floor=floor)
        for who, ceiling in (("minivit", matmul_gflops), ("torch", torch_matmul_gflops)):
            if who not in timings:
                continue
            t = timings[who]
            t["train"]["gflops"] = 3 * flops / t["train"]["median_s"] / 1e9
            t["train"]["fraction_of_matmul"] = t["train"]["gflops"] / ceiling
            t["infer"]["gflops"] = flops / t["infer"]["median_s"] / 1e9
        if "torch" in timings:
            entry["torch"] = timings["torch"]
            entry["ratio_train"] = (entry["train"]["images_per_s"]
                                    / entry["torch"]["train"]["images_per_s"])
            entry["ratio_infer"] = (entry["infer"]["images_per_s"]
                                    / entry["torch"]["infer"]["images_per_s"])
            # the best ratio possible with these matmuls: all else free
            entry["bound_train"] = (floor["train"]["images_per_s"]
                                    / entry["torch"]["train"]["images_per_s"])
            entry["bound_infer"] = (floor["infer"]["images_per_s"]
                                    / entry["torch"]["infer"]["images_per_s"])
        results["configs"][name] = entry

    mnist_s = results["configs"].get("mnist-s", {})
    reference = mnist_s.get("torch")
    # only at mnist-s's own batch size: that is what defines a reference-second
    if (reference is not None and torch_device == "cpu"
            and mnist_s["batch_size"] == CONFIGS["mnist-s"]["batch_size"]):
        # training times are quoted in reference-seconds: wall seconds scaled to a
        # machine on which PyTorch trains mnist-s at REFERENCE_TORCH_IMG_S
        per_s = reference["train"]["images_per_s"]
        results["reference_seconds_per_wall_second"] = per_s / REFERENCE_TORCH_IMG_S
    print_table(results)
    if args.json:
        write_json(results, args.json)
    return results


# PyTorch CPU training throughput on mnist-s (img/s) that defines one
# reference-second; see README, "Measuring speed".
REFERENCE_TORCH_IMG_S = 4600.0


def _rate(images_per_s: float) -> str:
    """Images/s with the digits that matter (1.5 for a large model, 4024 for a small)."""
    return f"{images_per_s:.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def print_table(results):
    print_machine(results["machine"])
    line = f"large float32 matmul: minivit/xp {results['matmul_gflops']:.0f} GFLOP/s"
    if results["torch_matmul_gflops"]:
        line += f", torch {results['torch_matmul_gflops']:.0f} GFLOP/s"
    print(line + "\n")
    header = (f"{'config':<14}{'batch':>6}{'train img/s (min-max)':>26}{'torch':>9}{'ratio':>7}"
              f"{'GFLOP/s':>9}{'%matmul':>8}{'infer img/s':>12}{'torch':>9}{'ratio':>7}"
              f"{'peak MB':>9}")
    print(header)
    print("-" * len(header))
    for name, e in results["configs"].items():
        tr, inf = e["train"], e["infer"]
        span = (f"{_rate(tr['images_per_s'])} ({_rate(tr['images_per_s_min'])}-"
                f"{_rate(tr['images_per_s_max'])})")
        t = e.get("torch")
        torch_train = _rate(t["train"]["images_per_s"]) if t else "-"
        torch_infer = _rate(t["infer"]["images_per_s"]) if t else "-"
        ratio_train = f"{e['ratio_train']:.2f}" if t else "-"
        ratio_infer = f"{e['ratio_infer']:.2f}" if t else "-"
        print(f"{name:<14}{e['batch_size']:>6}{span:>26}{torch_train:>9}{ratio_train:>7}"
              f"{tr['gflops']:>9.1f}{100 * tr['fraction_of_matmul']:>7.0f}%"
              f"{_rate(inf['images_per_s']):>12}{torch_infer:>9}{ratio_infer:>7}"
              f"{e['peak_train_memory_mb']:>9.1f}")
    print_floor(results)
    scale = results.get("reference_seconds_per_wall_second")
    if scale is not None:
        torch_img_s = results["configs"]["mnist-s"]["torch"]["train"]["images_per_s"]
        print(f"\nreference-seconds = wall seconds x {torch_img_s:.0f} / "
              f"{REFERENCE_TORCH_IMG_S:.0f} = wall seconds x {scale:.3f}  "
              f"(PyTorch CPU mnist-s train img/s in this run)")


def print_floor(results):
    """The matmul floor of each configuration: its matmuls alone, the images/s
    a step would reach if everything else took no time, that as a ratio to
    PyTorch's whole step (the best ratio these matmuls allow), and the share
    of minivit's own step they take."""
    print("\nmatmuls alone (the step's products on this BLAS, each replica's slice on a core "
          "of its own, at once; see matmul_floor):\nthe images/s if all else took no time, "
          "as a ratio to PyTorch's step, and their share of minivit's step")
    header = (f"{'config':<14}{'batch':>6}{'train ms':>10}{'img/s':>9}{'bound':>7}{'share':>7}"
              f"{'infer ms':>10}{'img/s':>9}{'bound':>7}{'share':>7}")
    print(header)
    print("-" * len(header))
    for name, e in results["configs"].items():
        cells = ""
        for phase in ("train", "infer"):
            floor = e["matmul_floor"][phase]
            bound = e.get(f"bound_{phase}")
            cells += (f"{1e3 * floor['median_s']:>10.1f}{_rate(floor['images_per_s']):>9}"
                      f"{'-' if bound is None else f'{bound:.2f}':>7}"
                      f"{100 * floor['median_s'] / e[phase]['median_s']:>6.0f}%")
        print(f"{name:<14}{e['batch_size']:>6}{cells}")


if __name__ == "__main__":
    main()
