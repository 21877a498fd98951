"""The fast elementwise kernels against the reference lines they replace.

    python benchmarks/bench_kernels.py
    NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" python benchmarks/bench_kernels.py

Times, on one thread and on float32 arrays of a training step's size:

* GELU (tanh form): the tanh lines of ``minivit/layers/gelu.py`` (its
  reference path) against the exp (sigmoid) form the fast path runs,
  ``minivit.kernels.gelu.gelu_sigmoid_forward_kernel``, with and without
  the derivative;
* erf: SciPy's against ``minivit.kernels.erf.erf_rational`` (float32).

The second command makes NumPy behave as on a CPU without AVX-512 (it then
runs float32 tanh one element at a time, exp still with AVX2); the numbers
show what the exp form buys there.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=128 * 17, help="rows (tokens of a batch)")
    p.add_argument("--cols", type=int, default=128, help="columns (MLP width)")
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MINIVIT_NUM_THREADS"):
        os.environ[var] = "1"
    import numpy as np  # noqa: PLC0415

    sys.path.insert(0, HERE)
    from common import machine_info, median_ms, print_machine  # noqa: PLC0415

    from minivit import kernels, no_grad  # noqa: PLC0415
    from minivit.kernels.erf import erf_rational  # noqa: PLC0415
    from minivit.kernels.gelu import gelu_sigmoid_forward_kernel  # noqa: PLC0415
    from minivit.layers import GELU  # noqa: PLC0415

    def reference_y():
        with kernels.using("reference"), no_grad():
            GELU().forward(x)

    def reference_y_and_derivative():
        with kernels.using("reference"):
            layer = GELU()
            layer.backward(layer.forward(x))

    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    y, d = np.empty_like(x), np.empty_like(x)
    print_machine(machine_info(None, 1))
    print(f"\nfloat32 ({args.rows}, {args.cols}), one thread, median of {args.reps} (ms)\n")
    rows = [("GELU y (tanh lines, reference)", reference_y),
            ("GELU y (exp form, used)", lambda: gelu_sigmoid_forward_kernel(x, y)),
            ("GELU y + dx (tanh lines, reference)", reference_y_and_derivative),
            ("GELU y + dy/dx (exp form)", lambda: gelu_sigmoid_forward_kernel(x, y, d)),
            ("np.tanh alone", lambda: np.tanh(x, out=y)),
            ("np.exp alone", lambda: np.exp(x, out=y))]
    try:
        from scipy.special import erf  # noqa: PLC0415
        rows.append(("erf (SciPy)", lambda: erf(x, out=y)))
    except ImportError:
        pass
    rows.append(("erf (rational, used for float32)", lambda: erf_rational(x, y)))
    for name, fn in rows:
        print(f"  {name:<36}{median_ms(fn, args.reps):8.3f}")


if __name__ == "__main__":
    main()
