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
import json
import os
import platform
import statistics
import sys
import time
from functools import partial

CONFIGS = {
    "mnist-s": dict(model=dict(image_size=28, patch_size=7, in_channels=1, num_classes=10,
                               dim=64, depth=6, heads=4, mlp_dim=128), batch_size=128),
    "bench-m": dict(model=dict(image_size=32, patch_size=4, in_channels=3, num_classes=10,
                               dim=192, depth=6, heads=3, mlp_dim=768), batch_size=64),
    # timm's vit_small_patch16_224 (exact GELU, 224x224, 1000 classes)
    "vit-s16": dict(model=dict(image_size=224, patch_size=16, in_channels=3, num_classes=1000,
                               dim=384, depth=12, heads=6, mlp_dim=1536, gelu="exact"),
                    batch_size=16),
}
# Run only when named (--config vit-b16): a training step takes many seconds.
EXTRA_CONFIGS = {
    "vit-b16": dict(model=dict(image_size=224, patch_size=16, in_channels=3, num_classes=1000,
                               dim=768, depth=12, heads=12, mlp_dim=3072, gelu="exact"),
                    batch_size=16),
}


def mnist_default_config():
    """The model and batch size that ``examples/train_mnist.py`` uses by default."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "examples"))
    try:
        import train_mnist  # noqa: PLC0415
        args = train_mnist.build_parser().parse_args([])
    except Exception:  # the example is optional for the benchmark
        return None
    finally:
        sys.path.pop(0)
    return dict(model=dict(image_size=28, patch_size=args.patch_size, in_channels=1,
                           num_classes=10, dim=args.dim, depth=args.depth, heads=args.heads,
                           mlp_dim=args.mlp_dim), batch_size=args.batch_size)


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


def matmul_shapes(cfg, batch_size, train=False):
    """The matmuls of one forward pass as minivit runs it, and with ``train``
    those of its backward too: a list of (count, m, k, n), ``count`` products
    of an (m, k) by a (k, n) matrix. Forward: patch projection, qkv, scores,
    attention-weighted values, proj, fc1, fc2 and the head. With pool "cls"
    (the default) the last block computes one query token's scores, values,
    proj and MLP, not t (see ``minivit.vit``). Backward: dW = dy^T x and
    dx = dy W for every Linear, and four products per attention. Left out:
    the patch projection's dx, which ``PatchEmbed.backward`` computes (it
    returns the images' gradient) but a training step does not need, so the
    list is what a step must multiply, at most what minivit does."""
    m = cfg
    b = batch_size
    grid = m["image_size"] // m["patch_size"]
    n = grid * grid
    t = n + 1
    d, hidden, heads = m["dim"], m["mlp_dim"], m["heads"]
    head_dim = d // heads
    forward, backward = [], []

    def linear(rows, fan_in, fan_out, input_grad=True):
        forward.append((1, rows, fan_in, fan_out))              # y = x W^T
        backward.append((1, fan_out, rows, fan_in))             # dW = dy^T x
        if input_grad:
            backward.append((1, rows, fan_out, fan_in))         # dx = dy W

    linear(b * n, m["in_channels"] * m["patch_size"] ** 2, d, input_grad=False)
    for i in range(m["depth"]):
        last = i == m["depth"] - 1 and m.get("pool", "cls") == "cls"
        queries = 1 if last else t
        linear(b * t, d, 3 * d)                                 # qkv: keys and values of all
        forward += [(b * heads, queries, head_dim, t),          # s = q k^T
                    (b * heads, queries, t, head_dim)]          # o = a v
        backward += [(b * heads, queries, head_dim, t),         # da = do v^T
                     (b * heads, t, queries, head_dim),         # dv = a^T do
                     (b * heads, queries, t, head_dim),         # dq = ds k
                     (b * heads, t, queries, head_dim)]         # dk = ds^T q
        linear(b * queries, d, d)                               # proj
        linear(b * queries, d, hidden)                          # fc1
        linear(b * queries, hidden, d)                          # fc2
    linear(b, d, m["num_classes"])                              # head
    return forward + backward if train else forward


def matmul_flops(cfg, batch_size):
    """Multiply-add FLOPs (2 per MAC) of one forward pass as minivit runs it
    (the products of ``matmul_shapes``)."""
    return sum(2 * count * m * k * n for count, m, k, n in matmul_shapes(cfg, batch_size))


def matmul_floor(cfg, parts, threads, train=False):
    """``matmuls_alone`` for a step of ``cfg`` on a batch cut into ``parts``
    (``Replicas.slices``), as fast as the cores run its products: each
    slice's on a core of its own, all at once, as the replicas run. A batch
    in one slice runs the faster (timed here) of two ways: every product in
    this process with BLAS's own threads, or every product split evenly
    over ``threads`` processes (the stacked attention products by matrices,
    the others by rows, as Linear splits its rows)."""
    from minivit import backend  # noqa: PLC0415
    shapes = matmul_shapes(cfg, max(hi - lo for lo, hi in parts), train)
    if len(parts) > 1 or threads == 1 or backend.name != "numpy":
        return matmuls_alone(shapes, len(parts))

    def share(count, m, k, n):
        if count >= threads:
            return (-(-count // threads), m, k, n)
        return (count, -(-m // threads), k, n)
    ways = [matmuls_alone(shapes), matmuls_alone([share(*s) for s in shapes], threads)]
    fastest = min(ways, key=lambda run: min(time_it(run, reps=3, warmup=1)))
    for run in ways:
        if run is not fastest:
            run.close()
    return fastest


def matmuls_alone(shapes, copies=1):
    """A function that runs the products of ``shapes`` alone, one after
    another, with ``xp.matmul`` into preallocated float32 outputs. With
    ``copies`` > 1, that many at once, as the replicas run: this process and
    ``copies - 1`` forked ones (threads where fork is missing), each on its
    own operands with BLAS on one thread. One set of operands per distinct
    shape, so small ones stay in cache: if anything this is faster than the
    step's own matmuls, not slower. ``.close()`` ends the others."""
    from minivit import ops  # noqa: PLC0415
    from minivit.replicas import _fork_available  # noqa: PLC0415

    work = _operands(shapes)
    if copies == 1:
        run = lambda: _run_products(work)               # noqa: E731
        run.close = lambda: None
        return run
    if _fork_available():                               # as the replicas: processes
        import multiprocessing  # noqa: PLC0415
        context = multiprocessing.get_context("fork")
        conns, procs = [], []
        for _ in range(copies - 1):
            conn, theirs = context.Pipe()
            procs.append(context.Process(target=_matmul_worker, args=(shapes, theirs),
                                         daemon=True))
            procs[-1].start()
            conns.append(conn)
        for conn in conns:
            conn.recv()                                 # its operands are made

        def others():
            for conn in conns:
                conn.send(True)
            return lambda: [conn.recv() for conn in conns]

        def close():
            for conn, proc in zip(conns, procs):
                conn.send(None)
                proc.join()
    else:                                               # threads (NumPy frees the GIL)
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        pool = ThreadPoolExecutor(max_workers=copies - 1)
        theirs = [_operands(shapes) for _ in range(copies - 1)]

        def others():
            futures = [pool.submit(_run_products, w) for w in theirs]
            return lambda: [f.result() for f in futures]
        close = pool.shutdown

    def run():
        with ops.blas_threads(1):
            wait = others()
            _run_products(work)
            wait()
    run.close = close
    return run


def _operands(shapes):
    """[(a, b, out)] for ``shapes``: random float32, one set per distinct shape."""
    import numpy as np  # noqa: PLC0415

    from minivit import backend  # noqa: PLC0415
    rng = np.random.default_rng(1)
    operands = {}
    for count, m, k, n in shapes:
        if (count, m, k, n) not in operands:
            lead = (count,) if count > 1 else ()
            a, b = (backend.to_device(rng.standard_normal(lead + shape), "float32")
                    for shape in ((m, k), (k, n)))
            operands[count, m, k, n] = (a, b, backend.xp.empty(lead + (m, n), dtype=a.dtype))
    return [operands[shape] for shape in shapes]


def _run_products(work):
    from minivit import backend  # noqa: PLC0415
    for a, b, out in work:
        backend.xp.matmul(a, b, out=out)


def _matmul_worker(shapes, conn):
    """A forked process of ``matmuls_alone``: its own operands, a run per message."""
    from minivit import ops  # noqa: PLC0415
    work = _operands(shapes)
    conn.send(True)
    with ops.blas_threads(1):
        while conn.recv() is not None:
            _run_products(work)
            conn.send(True)


def time_it(fn, reps, warmup, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summarise(times, batch_size):
    med = statistics.median(times)
    return dict(median_s=med, min_s=min(times), max_s=max(times),
                images_per_s=batch_size / med, images_per_s_min=batch_size / max(times),
                images_per_s_max=batch_size / min(times))


def main(argv=None):
    args = parse_args(argv)
    # Thread counts must be fixed before NumPy's BLAS starts.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    from minivit import backend  # noqa: PLC0415

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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
    from minivit.replicas import Replicas  # noqa: PLC0415
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
        ours = {"train": (partial(_timer, train_step, backend.synchronize), model.train),
                "infer": (partial(_timer, infer, backend.synchronize), model.eval)}
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
        steps["matmuls"] = {phase: (partial(_timer, run, backend.synchronize), lambda: None)
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
            model.backward(cross_entropy(model.forward(x), y)[1])
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


def write_json(results: dict, path: str) -> None:
    """Write the results atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    print(f"\nwrote {path}")


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo (Linux) or platform."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_simd() -> dict:
    """What NumPy was built for (baseline) and what it found and uses here
    (e.g. X86_V3 = AVX2 + FMA3, X86_V4 / AVX512_* = AVX-512), minus any
    that NPY_DISABLE_CPU_FEATURES switched off; ``avx512f``/``avx2``: whether
    NumPy's own kernels (tanh, exp, ...) run with those here."""
    import numpy as np  # noqa: PLC0415
    try:
        simd = np.show_config(mode="dicts").get("SIMD Extensions", {})
    except TypeError:                         # NumPy < 1.25: no dict mode
        simd = {}
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # noqa: PLC0415
    except ImportError:                       # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__  # noqa: PLC0415
    baseline = list(simd.get("baseline", []))
    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES", "").split()
    found = [f for f in simd.get("found", []) if f not in disabled]
    if not simd:                              # old NumPy: what the CPU has
        found = [f for f, on in __cpu_features__.items() if on and f not in disabled]
    used = baseline + found                   # what NumPy's kernels may dispatch to
    avx512 = any(f == "X86_V4" or f.startswith("AVX512") for f in used)
    avx2 = avx512 or any(f in ("X86_V3", "AVX2") for f in used)
    return dict(baseline=baseline, found=found, avx512f=avx512, avx2=avx2, disabled=disabled)


def machine_info(torch_info, threads, torch_device="cpu") -> dict:
    """The facts a reader needs to compare tables from different machines;
    ``torch_info``: ``TorchProcess.info`` (PyTorch's version and CPU
    capability), or None without PyTorch."""
    import numpy as np  # noqa: PLC0415

    from minivit import backend, memory  # noqa: PLC0415
    torch_info = torch_info or {}
    info = dict(platform=platform.platform(), processor=platform.processor() or
                platform.machine(), cpu_model=cpu_model(), cpu_count=os.cpu_count(),
                threads=threads, backend=backend.name, numpy=np.__version__,
                numpy_simd=numpy_simd(), torch=torch_info.get("version"),
                torch_device=torch_device, keep_freed_memory=memory.is_kept())
    if torch_info.get("cpu_capability"):
        info["torch_cpu_capability"] = torch_info["cpu_capability"]
    if backend.name == "cupy":
        props = backend.xp.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) \
            else str(props["name"])
    return info


def print_machine(m) -> None:
    simd = m["numpy_simd"]
    print(f"\nmachine: {m['cpu_model']} ({m['processor']}), {m['cpu_count']} cores, "
          f"{m['threads']} threads, backend {m['backend']}"
          + (f" ({m['gpu']})" if "gpu" in m else ""))
    print(f"numpy {m['numpy']} SIMD: baseline {' '.join(simd['baseline']) or '-'}, "
          f"found {' '.join(simd['found']) or '-'}"
          + (f", disabled by NPY_DISABLE_CPU_FEATURES: {' '.join(simd['disabled'])}"
             if simd["disabled"] else "")
          + f" -> AVX-512 {'yes' if simd['avx512f'] else 'no'}, AVX2 "
          f"{'yes' if simd['avx2'] else 'no'}")
    print(f"torch {m['torch'] or '-'}"
          + (f" ({m['torch_device']}"
             + (f", CPU capability {m['torch_cpu_capability']}"
                if m.get("torch_cpu_capability") else "")
             + ", own process, glibc malloc defaults)" if m["torch"] else "")
          + f"; minivit keeps freed memory: {'yes' if m.get('keep_freed_memory') else 'no'}")


def measure_peak_memory(step, backend):
    """Peak bytes allocated during one training step, beyond what was live before."""
    if backend.name == "cupy":
        pool = backend.xp.get_default_memory_pool()
        backend.synchronize()
        pool.free_all_blocks()
        before = pool.used_bytes()
        step()
        backend.synchronize()
        return max(pool.total_bytes() - before, 0)
    import tracemalloc  # noqa: PLC0415
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def _timer(fn, sync, reps, warmup):
    """``time_it`` as a contestant of ``interleaved``: (reps, warmup) -> seconds."""
    return time_it(fn, reps, warmup, sync)


def interleaved(contestants, reps, warmup, rounds=2):
    """``{name: timer}`` -> ``{name: [seconds, ...]}``, ``timer(reps, warmup)``
    returning the seconds of each rep (``_timer``, or another process's).

    The contestants take turns in blocks (``rounds`` blocks each, every block
    warmed up first), so a slow spell of the machine falls on both. Blocks
    rather than single reps: BLAS and OpenMP worker threads keep spinning for
    a while after a call, and would steal the cores from whoever runs next.
    """
    times = {name: [] for name in contestants}
    per_round = [reps // rounds + (1 if r < reps % rounds else 0) for r in range(rounds)]
    for n in per_round:
        for name, timer in contestants.items():
            times[name] += timer(n, warmup)
    return times


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
