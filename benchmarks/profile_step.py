"""Where a training step's time goes: a per-operation profile.

    python benchmarks/profile_step.py --config bench-m --steps 10

Runs forward + backward + AdamW for a few steps under cProfile and prints
each function's *own* time (excluding the functions it calls) as a share of
the step, so layer forward/backward, the optimizer and NumPy internals each
show what they cost.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="bench-m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np  # noqa: PLC0415

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train import CONFIGS, mnist_default_config  # noqa: PLC0415

    from minivit import backend  # noqa: PLC0415
    from minivit.loss import cross_entropy  # noqa: PLC0415
    from minivit.optim import AdamW, param_groups_weight_decay  # noqa: PLC0415
    from minivit.vit import ViT  # noqa: PLC0415

    configs = dict(CONFIGS, **({"mnist-default": mnist_default_config()}
                               if mnist_default_config() else {}))
    cfg = configs[args.config]
    model = ViT(**cfg["model"], seed=0)
    opt = AdamW(param_groups_weight_decay(model.named_parameters(), 0.05), lr=1e-3)
    rng = np.random.default_rng(0)
    m, batch = cfg["model"], cfg["batch_size"]
    x = backend.to_device(rng.standard_normal(
        (batch, m["in_channels"], m["image_size"], m["image_size"])).astype(np.float32))
    y = backend.to_device(rng.integers(0, m["num_classes"], size=batch))

    def step():
        model.zero_grad()
        _, dlogits = cross_entropy(model.forward(x), y)
        model.backward(dlogits)
        opt.step()
        backend.synchronize()

    step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.top]
    print(f"{args.config}, batch {batch}: {1000 * total / args.steps:.1f} ms per step "
          f"(profiled; {args.steps} steps)\n")
    print(f"{'share':>6} {'ms/step':>8} {'calls/step':>10}  function")
    for (filename, line, func), (cc, nc, tottime, cumtime, _) in rows:
        where = os.path.relpath(filename) if filename.startswith("/") else filename
        if "site-packages" in where or where.startswith(".."):
            where = where.split("site-packages/")[-1]
        print(f"{100 * tottime / total:5.1f}% {1000 * tottime / args.steps:8.2f} "
              f"{nc / args.steps:10.0f}  {func} ({where}:{line})")


if __name__ == "__main__":
    main()
