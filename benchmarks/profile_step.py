"""Where a training step's time goes: a per-operation profile.

    python benchmarks/profile_step.py --config bench-m --steps 10
    python benchmarks/profile_step.py --config mnist-s --steps 30 --cprofile
    python benchmarks/profile_step.py --config mnist-s --infer     # inference forward

By default every layer class's ``forward`` and ``backward`` are timed with
wall-clock timers and reported *exclusive* of the sub-layers they call (so
"MultiHeadSelfAttention.backward" is the attention arithmetic itself, its qkv
and proj Linears being counted under Linear), next to the loss, the
optimizer step and ``zero_grad``; the rows add up to the whole step. Work that
``parallel_rows`` runs in threads is counted in the layer that started it.
``--cprofile`` shows Python's function-level profile instead.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="bench-m")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override the configuration's batch size")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=25, help="rows to show with --cprofile")
    p.add_argument("--cprofile", action="store_true", help="function-level cProfile view")
    p.add_argument("--infer", action="store_true",
                   help="profile the inference forward (eval mode, no grad) instead")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "MINIVIT_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np  # noqa: PLC0415

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import CONFIGS, EXTRA_CONFIGS, mnist_default_config  # noqa: PLC0415

    from minivit import backend  # noqa: PLC0415
    from minivit.loss import cross_entropy  # noqa: PLC0415
    from minivit.optim import AdamW, param_groups_weight_decay  # noqa: PLC0415
    from minivit.vit import ViT  # noqa: PLC0415

    configs = dict(CONFIGS, **EXTRA_CONFIGS)
    default = mnist_default_config()
    if default is not None:
        configs["mnist-default"] = default
    if args.config not in configs:
        raise SystemExit(f"unknown configuration {args.config!r}; choose from {list(configs)}")
    cfg = configs[args.config]
    model = ViT(**cfg["model"], seed=0)
    opt = AdamW(param_groups_weight_decay(model.named_parameters(), 0.05), lr=1e-3)
    rng = np.random.default_rng(0)
    m, batch = cfg["model"], args.batch_size or cfg["batch_size"]
    x = backend.to_device(rng.standard_normal(
        (batch, m["in_channels"], m["image_size"], m["image_size"])).astype(np.float32))
    y = backend.to_device(rng.integers(0, m["num_classes"], size=batch))

    timer = ExclusiveTimer(backend.synchronize)
    zero_grad = timer.wrap("zero_grad", model.zero_grad)
    loss_fn = timer.wrap("cross_entropy", cross_entropy)
    opt_step = timer.wrap("AdamW.step", opt.step)

    def train_step():
        zero_grad()
        _, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits, input_grad=False)   # as in training: no image gradient
        opt_step()
        backend.synchronize()

    def infer_step():
        model.forward(x)
        backend.synchronize()

    if args.infer:
        model.eval()
        import minivit  # noqa: PLC0415
        minivit.no_grad().__enter__()            # for the rest of this process
    step = infer_step if args.infer else train_step
    step()
    if args.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.steps):
            step()
        prof.disable()
        print_cprofile(prof, args)
        return

    for cls in {type(mod) for _, mod in model.named_modules()}:
        for method in ("forward", "backward"):
            if method in cls.__dict__:
                setattr(cls, method, timer.wrap(f"{cls.__name__}.{method}",
                                                cls.__dict__[method], is_method=True))
    timer.reset()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    total = (time.perf_counter() - start) / args.steps
    what = "inference forward" if args.infer else "training step"
    print(f"{args.config}, batch {batch}, {what}: {1000 * total:.1f} ms per step "
          f"(mean of {args.steps}; timers add a little)\n")
    print(f"{'share':>6} {'ms/step':>8} {'calls/step':>10}  operation (exclusive of sub-layers)")
    rows = sorted(timer.own.items(), key=lambda kv: -kv[1])
    for name, seconds in rows:
        ms = 1000 * seconds / args.steps
        print(f"{100 * ms / (1000 * total):5.1f}% {ms:8.2f} "
              f"{timer.calls[name] / args.steps:10.0f}  {name}")
    rest = total - sum(timer.own.values()) / args.steps
    print(f"{100 * rest / total:5.1f}% {1000 * rest:8.2f} {'':>10}  (everything else: "
          "loop, Python glue)")


class ExclusiveTimer:
    """Wall-clock time of wrapped calls, minus the wrapped calls nested inside."""

    def __init__(self, sync):
        self.sync = sync
        self.reset()

    def reset(self):
        self.own = defaultdict(float)
        self.calls = defaultdict(int)
        self._children = [0.0]

    def wrap(self, name, fn, is_method=False):
        def timed(*a, **kw):
            self._children.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.sync()
                elapsed = time.perf_counter() - start
                nested = self._children.pop()
                self.own[name] += elapsed - nested
                self.calls[name] += 1
                self._children[-1] += elapsed
        return timed


def print_cprofile(prof, args):
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.top]
    print(f"{args.config}: {1000 * total / args.steps:.1f} ms per step (cProfile)\n")
    print(f"{'share':>6} {'ms/step':>8} {'calls/step':>10}  function")
    for (filename, line, func), (_, nc, tottime, _, _) in rows:
        where = filename.split("site-packages/")[-1]
        if where.startswith("/"):
            where = os.path.relpath(where)
        print(f"{100 * tottime / total:5.1f}% {1000 * tottime / args.steps:8.2f} "
              f"{nc / args.steps:10.0f}  {func} ({where}:{line})")


if __name__ == "__main__":
    main()
