"""The ranks of an MPI job and the collectives training uses.

Launched as ``mpirun -n N python examples/train_mnist.py`` (or ``srun``),
every process (a *rank*) runs the same program; :func:`init` finds out how
many there are and which one this is, and returns a :class:`World`: rank,
size, and the collectives (sum, broadcast, gather, barrier) on host arrays
through MPI and on device arrays through NCCL, with no copy to the host.
``World(None)`` (``SINGLE_PROCESS``) is one process, where every collective
returns its input.

Failure: MPI has no timeout on collectives, and a rank that raises an
exception while the others wait in ``Allreduce`` would leave them waiting
forever. So :meth:`World.abort_on_error` turns an exception on any rank into
``MPI_Abort`` of the whole job, and a watchdog thread aborts a collective
that has not finished after ``timeout`` seconds (a rank that hangs, or a
machine that vanished without the launcher noticing).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback

import numpy as np

from minivit import backend

__all__ = ["DistributedError", "World", "SINGLE_PROCESS", "MPI_EXTRA_HINT",
           "DEFAULT_TIMEOUT_S", "launcher_size", "init", "current"]

MPI_EXTRA_HINT = ("install the MPI extra: pip install -e '.[mpi]' (mpi4py, with MPICH "
                  "from the 'mpich' wheel where no system MPI exists)")

# A collective that has not finished after this long means a rank is gone.
DEFAULT_TIMEOUT_S = 600.0

# Environment variables by which launchers announce the number of processes:
# Open MPI's mpirun, MPICH/Intel MPI's hydra (and Slurm's PMI-2), Slurm's srun.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


class DistributedError(RuntimeError):
    """Ranks that cannot work together: MPI missing, configurations that
    differ between ranks, a batch that cannot be split, a collective that
    timed out."""


def launcher_size() -> int:
    """How many processes the launcher started (1 when not under one)."""
    for var in _SIZE_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


class World:
    """The ranks of one training job and the collectives the trainer uses.

    ``World(None)`` is a single process: every collective returns its input.
    Attributes: ``rank``, ``size``, ``local_rank`` (rank on this machine, which
    picks the GPU), ``comm`` (the mpi4py communicator or None), ``timeout``.
    """

    def __init__(self, comm=None, local_rank: int = 0, timeout: float | None = DEFAULT_TIMEOUT_S):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.local_rank = local_rank
        self.timeout = timeout
        self.nccl = None            # a cupy NcclCommunicator on the GPU backend
        # seconds inside collectives, waiting for slower ranks included (on the
        # GPU only the launch of NCCL's work: it runs asynchronously)
        self.comm_seconds = 0.0
        self._busy_since: float | None = None
        self._busy_what = ""
        self._watchdog: threading.Thread | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.comm is not None

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # -- collectives ----------------------------------------------------------
    @contextlib.contextmanager
    def _collective(self, what: str, watched: bool = True):
        """Time a collective and (if ``watched``) let the watchdog see it running."""
        start = time.monotonic()
        if watched:
            self._busy_what, self._busy_since = what, start
        try:
            yield
        finally:
            self.comm_seconds += time.monotonic() - start
            self._busy_since = None

    def allreduce_(self, array):
        """Sum ``array`` over all ranks, in place; returns it. Host arrays go
        through MPI, device arrays through NCCL."""
        if self.comm is None:
            return array
        with self._collective(f"Allreduce of {array.size} values"):
            if backend.is_array(array) and not isinstance(array, np.ndarray):
                self._nccl_allreduce_(array)
            else:
                in_place, op_sum = _mpi_in_place_sum()
                self.comm.Allreduce(in_place, array, op=op_sum)
        return array

    def _nccl_allreduce_(self, array) -> None:
        if self.nccl is None:
            raise DistributedError("device arrays need NCCL, which was not set up "
                                   "(minivit.parallel.mpi.init does it on the cupy backend)")
        from cupy.cuda import nccl
        kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        # on the current stream: later kernels on it wait for the sum, no host sync
        stream = backend.xp.cuda.get_current_stream()
        self.nccl.allReduce(array.data.ptr, array.data.ptr, array.size, kinds[array.dtype],
                            nccl.NCCL_SUM, stream.ptr)

    def sum(self, values) -> np.ndarray:
        """Sum a few numbers over all ranks (float64, on the host)."""
        out = np.array(values, dtype=np.float64)
        return self.allreduce_(out)

    def broadcast(self, obj, root: int = 0):
        """Rank ``root``'s Python object, on every rank (pickled)."""
        if self.comm is None:
            return obj
        with self._collective("broadcast"):
            return self.comm.bcast(obj, root=root)

    def broadcast_array_(self, array, root: int = 0):
        """Overwrite ``array`` on every rank with rank ``root``'s (host or device)."""
        if self.comm is None:
            return array
        host = np.ascontiguousarray(backend.to_numpy(array))   # start-up only: via the host
        with self._collective("Bcast"):
            self.comm.Bcast(host, root=root)
        if host is not array:
            array[...] = backend.to_device(host)
        return array

    def allgather(self, obj) -> list:
        """Every rank's Python object, in rank order, on every rank."""
        if self.comm is None:
            return [obj]
        with self._collective("allgather"):
            return self.comm.allgather(obj)

    def barrier(self, watched: bool = True) -> None:
        """Wait for every rank. ``watched=False`` exempts this wait from the
        timeout (e.g. while rank 0 downloads a dataset for the others)."""
        if self.comm is not None:
            with self._collective("barrier", watched):
                self.comm.Barrier()

    # -- failure --------------------------------------------------------------
    def abort(self, code: int = 1) -> None:
        """Stop every rank of the job now (MPI_Abort); no-op on one process."""
        if self.comm is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(0.5)         # let the launcher forward what was just printed
            self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_error(self):
        """Run a block; an exception on this rank aborts the whole job.

        Without this, a rank that fails while the others wait in a collective
        leaves them waiting forever (MPI collectives have no timeout).
        Exceptions that every rank raises together (``all_ranks = True``, e.g.
        a configuration mismatch found by a collective) propagate normally.
        """
        try:
            yield
        except BaseException as exc:
            if self.size > 1 and not getattr(exc, "all_ranks", False) \
                    and not isinstance(exc, SystemExit):
                print(f"\nrank {self.rank} of {self.size} failed, stopping all ranks:",
                      file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                self.abort(1)
            raise

    def start_watchdog(self) -> None:
        """Abort the job when a collective runs longer than ``self.timeout``."""
        if self.comm is None or self.size == 1 or not self.timeout or self._watchdog:
            return

        def watch():
            poll = min(1.0, self.timeout / 4)
            while True:
                time.sleep(poll)
                since = self._busy_since
                if since is not None and time.monotonic() - since > self.timeout:
                    print(f"\nrank {self.rank}: {self._busy_what} has not finished after "
                          f"{self.timeout:g} s: another rank has stopped, hangs or lost its "
                          "connection. Aborting all ranks (raise the limit with "
                          "--collective-timeout if a rank legitimately works this long "
                          "alone).", file=sys.stderr, flush=True)
                    self.abort(3)

        self._watchdog = threading.Thread(target=watch, name="minivit-watchdog", daemon=True)
        self._watchdog.start()


def _mpi_in_place_sum():
    try:
        from mpi4py import MPI
    except ImportError:             # a stand-in communicator (tests)
        return None, None
    return MPI.IN_PLACE, MPI.SUM


SINGLE_PROCESS = World(None)
_current = SINGLE_PROCESS


def current() -> World:
    """The world the last :func:`init` returned (one process before any)."""
    return _current


def init(require: bool = False, timeout: float | None = DEFAULT_TIMEOUT_S) -> World:
    """The :class:`World` this process belongs to.

    Under a launcher that started more than one process (mpirun, mpiexec,
    srun), or with ``require=True`` (``--distributed``), MPI is initialised
    through mpi4py; otherwise this is a single process and MPI is not touched.
    On the cupy backend each rank takes GPU ``local_rank % device_count``
    and an NCCL communicator is built for the gradients.

    Raises:
        DistributedError: mpi4py is missing, or the MPI library mpi4py uses is
            not the one the launcher belongs to (every rank would see itself
            alone and train the whole model separately).
    """
    global _current
    launched = launcher_size()
    if launched <= 1 and not require:
        _current = SINGLE_PROCESS
        return _current
    why = (f"this process was started as one of {launched} by an MPI launcher"
           if launched > 1 else "--distributed")
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(
            f"{why}, but mpi4py is not installed: {MPI_EXTRA_HINT}. "
            "Without it, run a single process (no mpirun).") from None
    comm = MPI.COMM_WORLD
    if launched > 1 and comm.Get_size() != launched:
        raise DistributedError(
            f"the launcher started {launched} processes but MPI sees {comm.Get_size()}: "
            f"the mpirun used ({_which('mpirun')}) does not belong to the MPI library "
            f"mpi4py was built with ({MPI.Get_library_version().splitlines()[0].strip()}). "
            "Use the mpirun of the same installation (with the 'mpich' wheel: the one "
            "in your virtual environment's bin/).")
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    world = World(comm, local_rank=local_rank, timeout=timeout)
    if backend.name == "cupy":
        _init_gpu(world)
    world.start_watchdog()
    _current = world
    return world


def _which(program: str) -> str:
    import shutil
    return shutil.which(program) or "not on PATH"


def _init_gpu(world: World) -> None:
    """One GPU per rank (by local rank) and an NCCL communicator over the ranks."""
    cupy = backend.xp
    count = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(world.local_rank % count).use()
    try:
        from cupy.cuda import nccl
    except ImportError:
        nccl = None
    if nccl is None or not getattr(nccl, "available", True):
        raise DistributedError(
            "the cupy backend reduces gradients on the GPU with NCCL, which this CuPy "
            "cannot load: install it (python -m cupyx.tools.install_library --library "
            "nccl --cuda 12.x, or the nvidia-nccl-cu12 wheel)")
    uid = world.broadcast(nccl.get_unique_id() if world.is_main else None)
    world.nccl = nccl.NcclCommunicator(world.size, uid, world.rank)
