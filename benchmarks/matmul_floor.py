"""The matmul floor of a step: the products minivit runs, timed alone.

``matmul_shapes`` lists the matrix products of a forward (and backward) pass
as minivit runs them, ``matmul_flops`` counts their FLOPs, and
``matmul_floor`` / ``matmuls_alone`` run them alone on this BLAS, each
replica's slice on a core of its own, as the replicas run: how fast a step
would be if everything else took no time.
"""

from __future__ import annotations

from common import time_it

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
    from minivit.parallel.replicas import _fork_available  # noqa: PLC0415
    from minivit.parallel.threads import blas_threads  # noqa: PLC0415

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
        with blas_threads(1):
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
    from minivit.parallel.threads import blas_threads  # noqa: PLC0415
    work = _operands(shapes)
    conn.send(True)
    with blas_threads(1):
        while conn.recv() is not None:
            _run_products(work)
            conn.send(True)
