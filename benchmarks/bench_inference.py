"""Inference of a pretrained-size ViT on the CPU: minivit against PyTorch, same weights.

    python benchmarks/bench_inference.py                                # ViT-B/16, batch 1 and 16
    python benchmarks/bench_inference.py --model vit_small_patch16_224 --batch 1 64
    python benchmarks/bench_inference.py --weights ViT-B_16.npz --reps 5

The model is one of minivit's timm presets (random weights, or ``--weights``
loaded with ``minivit.pretrained.load_pretrained``); the PyTorch twin
(``benchmarks/torch_vit.py``) gets the same weights, and both run the same
batch, eval mode, without gradients (``minivit.no_grad()`` /
``torch.no_grad()``), taking turns so that a slow moment of the machine
hurts all alike. PyTorch runs in a process of its own with glibc's malloc
as it is (``torch_process.py``; minivit's process keeps freed memory for
reuse, ``minivit.memory``). Printed per batch size: images/s, the ratio, the largest
absolute difference of their logits, and the matmul floor: the forward's
matmuls alone on this BLAS, on every core (``matmul_floor.matmul_floor``), as
fast as minivit could possibly be ("bound": that over PyTorch's images/s).
minivit runs twice: ``model.forward`` (threads within each operation) and,
for batches of 8 or more,
``Replicas(model).logits`` (a model replica per core, each on a slice of the
batch, as the Trainer evaluates; its logits are checked against the first).

Peak memory (skip with ``--no-memory``) is measured as a person would see it:
each contestant runs two forwards of the largest batch in a fresh process of
its own; reported are the resident memory once the model is loaded and the
peak during the forwards (VmHWM, reset after loading).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_base_patch16_224",
                   help="a minivit.pretrained preset (default vit_base_patch16_224), or one "
                        "of bench_train.py's configurations (mnist-s, bench-m, vit-s16)")
    p.add_argument("--weights", default=None,
                   help="a checkpoint file (.npz, .safetensors, .pth); random weights if absent")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per batch size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2,
                   help="threads for BLAS, minivit's kernels and PyTorch alike (default 2)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory measurement (two extra processes)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--_memory-child", dest="memory_child", default=None,
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        os.environ[var] = str(n)


def build(args, with_torch=True):
    """(minivit model, PyTorch twin or None, torch module or None)."""
    from minivit.pretrained import create_model, load_pretrained  # noqa: PLC0415

    sys.path.insert(0, HERE)
    from common import CONFIGS  # noqa: PLC0415
    if args.weights:
        model = load_pretrained(args.weights, preset=args.model)
    elif args.model in CONFIGS:                     # a from-scratch size, as bench_train.py
        from minivit.vit import ViT  # noqa: PLC0415
        model = ViT(**CONFIGS[args.model]["model"], seed=0)
    else:
        model = create_model(args.model)
        import numpy as np  # noqa: PLC0415
        rng = np.random.default_rng(0)
        # visible weights everywhere (fresh LayerNorms and zero biases would hide errors)
        state = {k: (v + 0.02 * rng.standard_normal(v.shape)).astype(v.dtype)
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
    model.eval()
    if not with_torch:
        return model, None, None
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return model, None, None
    torch.set_num_threads(args.threads)
    sys.path.insert(0, HERE)
    from torch_vit import from_minivit  # noqa: PLC0415
    return model, from_minivit(model).eval(), torch


def _status_mb(field):
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024               # kB
    raise OSError(field)


def peak_rss_mb():
    """Peak resident memory since exec (or since ``reset_peak``). Not
    ``ru_maxrss``: Linux carries that over from the parent across fork+exec."""
    try:
        return _status_mb("VmHWM")
    except OSError:                                               # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb():
    try:
        return _status_mb("VmRSS")
    except OSError:
        return peak_rss_mb()


def reset_peak():
    """Start the peak afresh from the current resident memory (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_child(args):
    """Run in a fresh process: load, note the memory held, run batches, note the peak."""
    import numpy as np  # noqa: PLC0415

    import minivit  # noqa: PLC0415
    who = args.memory_child
    model, twin, torch = build(args, with_torch=who == "torch")
    batch = max(args.batch)
    x = np.random.default_rng(1).standard_normal((batch, model.config["in_channels"],
                                                  model.config["image_size"],
                                                  model.config["image_size"]))
    x = x.astype(np.float32)
    if who == "torch":
        del model
        xt = torch.from_numpy(x)
    else:
        twin = None
    import gc  # noqa: PLC0415
    gc.collect()
    # the weights' temporaries, freed but kept by minivit's process for reuse: given
    # back, as load_pretrained does after loading a file (minivit.memory)
    minivit.memory.release_freed_memory()
    reset_peak()                         # loading (float64 copies etc.) is not the forward
    loaded = current_rss_mb()
    for _ in range(2):
        if who == "torch":
            with torch.no_grad():
                twin(xt)
        else:
            with minivit.no_grad():
                model.forward(x)
    print(json.dumps(dict(loaded_mb=loaded, peak_mb=peak_rss_mb(),
                          after_mb=current_rss_mb())))


def measure_memory(args, who):
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model,
           "--batch", str(max(args.batch)), "--threads", str(args.threads),
           "--_memory-child", who]
    if args.weights:
        cmd += ["--weights", args.weights]
    env = os.environ.copy()
    if who == "torch":                   # PyTorch as its users run it (see torch_process.py)
        env["MINIVIT_KEEP_FREED_MEMORY"] = "0"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the {who} memory run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    sys.path.insert(0, HERE)
    from torch_process import TorchProcess, torch_available  # noqa: PLC0415

    pytorch = TorchProcess(args.threads) if torch_available() else None
    try:
        return _run(args, pytorch)
    finally:
        if pytorch is not None:
            pytorch.close()


def _run(args, pytorch):
    """The timed part of ``main``; ``pytorch``: the PyTorch process, or None."""
    import numpy as np  # noqa: PLC0415
    from common import machine_info, print_machine, time_it, write_json  # noqa: PLC0415
    from matmul_floor import matmul_floor  # noqa: PLC0415

    import minivit  # noqa: PLC0415
    from minivit.parallel.replicas import Replicas  # noqa: PLC0415
    model, _, _ = build(args, with_torch=False)
    info = machine_info(pytorch and pytorch.info, args.threads)
    results = dict(machine=info, model=args.model, weights=args.weights,
                   params=model.num_parameters(), batches={})
    size = model.config["image_size"]
    rng = np.random.default_rng(1)
    replicas = Replicas(model, threads=args.threads)
    for batch in args.batch:
        x = rng.standard_normal((batch, model.config["in_channels"], size, size)).astype(
            np.float32)

        def ours():
            with minivit.no_grad():
                return model.forward(x)

        # each contestant: (reps, warmup) -> seconds of each rep
        contestants = {"minivit": lambda n, w: time_it(ours, n, w)}
        if len(replicas.slices(batch)) > 1:
            def ours_replicas():                 # a replica per core, each on a slice
                with minivit.no_grad():
                    return replicas.logits(x)
            contestants["replicas"] = lambda n, w: time_it(ours_replicas, n, w)
        if pytorch is not None:
            pytorch.load(model, x, train=False)
            pytorch.mode(False)
            contestants["torch"] = lambda n, w: pytorch.time("infer", n, w)
        # the matmul floor: the forward's products alone, on every core
        floor = matmul_floor(model.config, replicas.slices(batch), args.threads)
        contestants["matmuls"] = lambda n, w: time_it(floor, n, w)
        times = {name: [] for name in contestants}
        for _ in range(2):                       # take turns, in two blocks each
            for name, timer in contestants.items():
                times[name] += timer(max(1, args.reps // 2), args.warmup)
        entry = {name: dict(median_s=statistics.median(t), images_per_s=batch / statistics.median(t))
                 for name, t in times.items()}
        floor.close()
        if "replicas" in entry:
            np.testing.assert_allclose(ours_replicas(), ours(), rtol=1e-4, atol=1e-5)
        if pytorch is not None:
            entry["ratio"] = entry["minivit"]["images_per_s"] / entry["torch"]["images_per_s"]
            if "replicas" in entry:
                entry["ratio_replicas"] = (entry["replicas"]["images_per_s"]
                                           / entry["torch"]["images_per_s"])
            entry["max_abs_logit_diff"] = float(np.abs(ours() - pytorch.logits()).max())
            # the best ratio these matmuls allow, all else free
            entry["bound"] = entry["matmuls"]["images_per_s"] / entry["torch"]["images_per_s"]
        results["batches"][batch] = entry
    if args.memory:
        results["memory"] = {who: measure_memory(args, who)
                             for who in (["minivit", "torch"] if pytorch else ["minivit"])}

    print_machine(info)
    print(f"model {args.model} ({results['params'] / 1e6:.1f} M parameters, "
          f"{'weights ' + args.weights if args.weights else 'random weights'}), "
          f"float32, eval mode, no grad\n")
    header = (f"{'batch':>6}{'minivit img/s':>15}{'replicas img/s':>16}{'torch img/s':>13}"
              f"{'ratio':>7}{'ratio (replicas)':>18}{'max |dlogit|':>14}"
              f"{'matmuls img/s':>15}{'bound':>7}")
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for batch, e in results["batches"].items():
        t, r = e.get("torch"), e.get("replicas")
        print(f"{batch:>6}{e['minivit']['images_per_s']:>15.2f}"
              f"{(r['images_per_s'] if r else nan):>16.2f}"
              f"{(t['images_per_s'] if t else nan):>13.2f}"
              f"{e.get('ratio', nan):>7.2f}{e.get('ratio_replicas', nan):>18.2f}"
              f"{e.get('max_abs_logit_diff', nan):>14.2e}"
              f"{e['matmuls']['images_per_s']:>15.2f}{e.get('bound', nan):>7.2f}")
    print("\nminivit: model.forward (threads within each operation); replicas: "
          "Replicas(model).logits, a model replica per core on a slice of the batch "
          "(as the Trainer evaluates); a batch under 8 images is not cut.\nmatmuls: the "
          "forward's matmuls alone on this BLAS, each core a share: the images/s if all else "
          "took no time; bound: that over PyTorch's "
          "images/s, the best ratio these matmuls allow")
    if args.memory:
        print(f"\nresident memory, batch {max(args.batch)} (fresh process each):")
        for who, m in results["memory"].items():
            rise = max(0.0, m["peak_mb"] - m["loaded_mb"])
            print(f"  {who:<8} model loaded {m['loaded_mb']:6.0f} MB, peak {m['peak_mb']:6.0f} MB "
                  f"(forward: +{rise:.0f} MB at most)")
    if args.json:
        write_json(results, args.json)
    return results


if __name__ == "__main__":
    main()
