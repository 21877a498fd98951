"""What the benchmark scripts share: the model configurations, timing, the machine.

Imported by ``bench_train.py``, ``bench_inference.py``, ``bench_kernels.py``,
``bench_distributed.py``, ``profile_step.py`` and ``torch_process.py``; it
imports none of them (run the scripts, import this).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

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


def median_ms(fn, reps, warmup=1):
    """Median milliseconds of one call of ``fn`` over ``reps`` calls, after ``warmup``."""
    return 1000 * statistics.median(time_it(fn, reps, warmup))


def summarise(times, batch_size):
    med = statistics.median(times)
    return dict(median_s=med, min_s=min(times), max_s=max(times),
                images_per_s=batch_size / med, images_per_s_min=batch_size / max(times),
                images_per_s_max=batch_size / min(times))


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

    from minivit import backend, kernels, memory  # noqa: PLC0415
    from minivit.kernels import fused  # noqa: PLC0415
    torch_info = torch_info or {}
    info = dict(platform=platform.platform(), processor=platform.processor() or
                platform.machine(), cpu_model=cpu_model(), cpu_count=os.cpu_count(),
                threads=threads, backend=backend.name, numpy=np.__version__,
                numpy_simd=numpy_simd(), torch=torch_info.get("version"),
                torch_device=torch_device, keep_freed_memory=memory.is_kept(),
                kernels=kernels.mode(), numba=_numba_version() if fused.available() else None)
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
    if "kernels" in m:
        fused_on = m["kernels"] in ("fast", "fused") and m.get("numba")
        print(f"minivit kernels: MINIVIT_KERNELS={m['kernels']} -> "
              + (f"fused (numba {m['numba']})" if fused_on else
                 "NumPy" if m["kernels"] != "reference" else "reference code"))


def _numba_version():
    import numba  # noqa: PLC0415
    return numba.__version__


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


def timer(fn, sync, reps, warmup):
    """``time_it`` as a contestant of ``interleaved``: (reps, warmup) -> seconds."""
    return time_it(fn, reps, warmup, sync)


def interleaved(contestants, reps, warmup, rounds=2):
    """``{name: timer}`` -> ``{name: [seconds, ...]}``, ``timer(reps, warmup)``
    returning the seconds of each rep (``timer``, or another process's).

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
