"""Parallelism: every core of a machine, and many machines, on one batch.

Three mechanisms (threads, replicas, MPI ranks) and the arithmetic they share:

==================  ==========================================================
file                what it holds
==================  ==========================================================
threads.py          ``parallel_rows``: one kernel on blocks of rows, in threads;
                    BLAS threads held back while ours run
replicas.py         ``Replicas``: a model replica per core, each on a slice of
                    the batch (forked worker processes on Linux, else threads)
workers.py          the forked worker processes of ``Replicas`` and the shared
                    memory they read weights from and write gradients into
mpi.py              ``World``: the ranks of an MPI job, their collectives
                    (MPI on the host, NCCL on the GPU), abort and watchdog
distributed.py      data parallel over MPI: shards, gradient buckets and their
                    allreduce, consistency checks (and ``mpi``'s names)
==================  ==========================================================

**The averaged gradient.** A batch of B images is cut into parts: a slice
per replica (``Replicas``), a shard per rank (``distributed``), or both.
Part r holds n_r images and computes the mean loss over them,
L_r = (1/n_r) sum_{i in r} l_i, and its gradient g_r = dL_r/dw. The batch's mean loss is

    L = (1/B) sum_i l_i = sum_r (n_r / B) L_r,

and the gradient is linear, so

    dL/dw = sum_r (n_r / B) g_r.

So each part scales its gradient by its share n_r / B (a replica scales its
dlogits before its backward; a rank scales its gradient buckets before the
allreduce) and the parts' gradients are summed. This is *exactly* the
gradient one process computes on the whole batch, also when the batch does
not split evenly (the last, smaller batch of an epoch); dividing by the
number of parts instead would weight the images of a smaller part more.
Only the order of the floating-point additions differs, so parts reproduce
one process to rounding (the tests bound the difference). The optimizer step
then sees the same gradient everywhere, so every replica and rank keeps the
same weights.
"""
