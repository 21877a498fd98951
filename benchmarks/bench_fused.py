"""The fused kernels (numba) against the NumPy kernels they replace, one by one.

    python benchmarks/bench_fused.py                   # mnist-s sizes, 1 and 2 threads
    python benchmarks/bench_fused.py --config bench-m

For each kind of work: the median time of one call on float32 arrays of a
training step's size (a config's batch, tokens and widths), through the
kernels' own entry points, with ``MINIVIT_KERNELS`` set to ``numpy`` and to
``fused`` in turn; the fused kernels are compiled (or loaded from the disk
cache) before timing. ``--threads`` sets ``MINIVIT_NUM_THREADS`` (which both
the NumPy kernels' thread pool and numba's threads follow).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def cases(config, np):
    """(name, function) pairs; each function runs on the current kernels."""
    from minivit import backend, kernels
    from minivit.kernels import attention, gelu, layernorm
    from minivit.loss import cross_entropy
    from minivit.optim.adamw import AdamW
    from minivit.module import Parameter
    m = config["model"]
    B = config["batch_size"]
    T = (m["image_size"] // m["patch_size"]) ** 2 + 1
    D, M, H = m["dim"], m["mlp_dim"], m["heads"]
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    x, dy, gamma, beta = r(B * T, D), r(B * T, D), r(D), r(D)
    hidden = r(B, T, M)
    y, xhat, rstd = layernorm.forward(x, gamma, beta, 1e-6)
    scores, dattn = r(B, H, T, T), r(B, H, T, T)
    attn = np.empty_like(scores)
    attention.softmax_of_score_matrices(scores.copy(), attn)
    logits, labels = r(B, m["num_classes"]), rng.integers(0, m["num_classes"], B)
    params = [Parameter(r(3 * D, D)), Parameter(r(M, D)), Parameter(r(D, M))]
    for p in params:
        p.grad[...] = r(*p.shape)
    opt = AdamW(params, lr=1e-3)

    def softmax():
        if kernels.switch.fused_for(scores):
            from minivit.kernels.fused.softmax import softmax_scaled
            softmax_scaled(scores, attn, 0.125)
        else:
            s = scores * np.float32(0.125)
            attention.softmax_of_score_matrices(s, attn)

    def softmax_backward():
        d = dattn.copy()
        if kernels.switch.fused_for(d):
            from minivit.kernels.fused.softmax import softmax_backward_in_place
            softmax_backward_in_place(d, attn, 0.125)
        else:
            d -= kernels.reductions.dot_last(d, attn)
            d *= attn
            d *= 0.125

    def dropout():
        backend.seed(0)
        kernels.dropout.forward(hidden, 0.1)

    return [
        (f"LayerNorm forward ({B * T}, {D})", lambda: layernorm.forward(x, gamma, beta, 1e-6)),
        (f"LayerNorm backward ({B * T}, {D})", lambda: layernorm.backward(dy, xhat, rstd, gamma)),
        (f"GELU tanh y + dy/dx ({B}, {T}, {M})", lambda: gelu.forward(hidden, "tanh", True)),
        (f"GELU exact y + dy/dx ({B}, {T}, {M})", lambda: gelu.forward(hidden, "none", True)),
        (f"softmax (scaled) ({B}, {H}, {T}, {T})", softmax),
        (f"softmax backward ({B}, {H}, {T}, {T})", softmax_backward),
        (f"dropout p=0.1 ({B}, {T}, {M})", dropout),
        (f"cross-entropy ({B}, {m['num_classes']})",
         lambda: cross_entropy(logits, labels, 0.1)),
        (f"AdamW step ({sum(p.data.size for p in params)} values)", opt.step),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="mnist-s", help="mnist-s, bench-m, vit-s16")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args(argv)
    import numpy as np  # noqa: PLC0415
    sys.path.insert(0, HERE)
    from common import CONFIGS, machine_info, median_ms, print_machine  # noqa: PLC0415

    from minivit import backend, kernels  # noqa: PLC0415
    from minivit.kernels import fused  # noqa: PLC0415
    from minivit.parallel.threads import blas_threads  # noqa: PLC0415
    fused.require()
    import numba  # noqa: PLC0415
    print_machine(machine_info(None, max(args.threads)))
    print(f"numba {numba.__version__}; config {args.config}; float32; median of {args.reps} (ms)")
    config = CONFIGS[args.config]
    for threads in args.threads:
        os.environ["MINIVIT_NUM_THREADS"] = str(threads)
        print(f"\n{threads} thread(s)\n")
        print(f"| {'kernel':<40} | NumPy kernels | fused | speed-up |")
        print(f"|{'-' * 42}|---------------|-------|----------|")
        with backend.using("numpy", dtype="float32"), blas_threads(threads):
            rows = {}
            for mode in ("numpy", "fused"):
                with kernels.using(mode):
                    for name, fn in cases(config, np):
                        rows.setdefault(name, []).append(median_ms(fn, args.reps))
        for name, (slow, fast) in rows.items():
            print(f"| {name:<40} | {slow:13.3f} | {fast:5.3f} | {slow / fast:7.2f}x |")


if __name__ == "__main__":
    main()
