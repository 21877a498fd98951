"""The array backend: one place that decides where arrays live.

Every layer is written once against ``xp``, the array module this file picks:
NumPy on the CPU (the default) or CuPy on an NVIDIA GPU. Choose with the
environment variable ``MINIVIT_BACKEND=numpy|cupy`` or, inside a process,
with :func:`use` / :func:`using`.

Layer code reads the module at call time (``xp = backend.xp``), so switching
backend takes effect for everything created afterwards.

Also here:

* ``to_numpy`` / ``to_device``: the only host <-> device transfers
  (data loading, logging, saving);
* the default float dtype: float32, or float64 on request
  (``MINIVIT_DTYPE=float64``, :func:`set_default_dtype`, or ``using(dtype=...)``);
* ``seed(n)``: one call that makes initialisation, dropout masks and
  shuffling reproducible.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy

VALID_BACKENDS = ("numpy", "cupy")
VALID_DTYPES = ("float32", "float64")

# The active array module. Layers read ``backend.xp`` each call.
xp = numpy
name = "numpy"
_default_dtype = numpy.dtype(numpy.float32)

# Host generator: parameter initialisation and data shuffling/augmentation
# (both happen on the host, at the boundary). Device generator: dropout masks.
_host_rng = numpy.random.default_rng(0)
_device_rng = numpy.random.default_rng(0)


# The fix that the errors below name: which extra installs CuPy.
_INSTALL_HINT = (
    'from the minivit folder with `pip install -e ".[cuda12]"` if `nvidia-smi` '
    'shows "CUDA Version: 12.x", or `pip install -e ".[cuda13]"` for 13.x'
)
_CPU_HINT = "or use MINIVIT_BACKEND=numpy to run on the CPU."


def _import_cupy():
    """Import CuPy and make sure it can run on a GPU, or explain what is missing.

    Four ways this fails, each a RuntimeError that names the problem and the
    fix (README.md, "Running on a GPU", quotes them): CuPy not installed;
    CuPy installed but broken; no usable driver or GPU; CUDA libraries
    (cuBLAS, NVRTC) missing.
    """
    try:
        import cupy  # noqa: PLC0415
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
            raise RuntimeError(
                "MINIVIT_BACKEND=cupy was requested but CuPy is not installed. "
                f"Install it {_INSTALL_HINT}; {_CPU_HINT}"
            ) from exc
        raise RuntimeError(
            "MINIVIT_BACKEND=cupy was requested but CuPy is installed and fails to "
            f"import ({type(exc).__name__}: {exc}). Keep exactly one CuPy package "
            "(`pip list | grep -i cupy`) and make it match the driver: reinstall it "
            f"{_INSTALL_HINT}; {_CPU_HINT}"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing, too old, or no device
        raise RuntimeError(
            "MINIVIT_BACKEND=cupy was requested and CuPy is installed, but no "
            f"usable NVIDIA GPU/driver was found ({type(exc).__name__}: {exc}). "
            "`nvidia-smi` must list a GPU, and the \"CUDA Version\" it shows must be at "
            "least the CUDA major version of the installed CuPy (cupy-cuda12x: 12, "
            f"cupy-cuda13x: 13); {_CPU_HINT}"
        ) from exc
    if count < 1:
        raise RuntimeError(
            "MINIVIT_BACKEND=cupy was requested and CuPy is installed, but no "
            "GPU is visible (check CUDA_VISIBLE_DEVICES and `nvidia-smi`); "
            f"{_CPU_HINT}"
        )
    try:
        # One matmul (cuBLAS) and one compiled elementwise/reduction kernel
        # (NVRTC): the libraries a CuPy wheel does not bring by itself.
        a = cupy.arange(4, dtype=cupy.float32)
        float(a @ a + cupy.exp(a).sum())
    except Exception as exc:
        raise RuntimeError(
            f"MINIVIT_BACKEND=cupy was requested and CuPy sees {count} GPU(s), but "
            f"cannot compute on them ({type(exc).__name__}: {exc}). CuPy needs the "
            "CUDA libraries (cuBLAS, NVRTC) of its CUDA major version: install the CUDA "
            "Toolkit 12.x or 13.x, or get them from PyPI with "
            '`pip install "cupy-cuda12x[ctk]"` (or "cupy-cuda13x[ctk]"; CuPy 14 or '
            f"later); {_CPU_HINT}"
        ) from exc
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one GPU (used to skip tests)."""
    try:
        _import_cupy()
    except RuntimeError:
        return False
    return True


def _check_name(backend_name: str) -> str:
    key = str(backend_name).strip().lower()
    if key not in VALID_BACKENDS:
        raise ValueError(
            f"unknown backend {backend_name!r}; valid values are "
            f"{', '.join(VALID_BACKENDS)} (set MINIVIT_BACKEND or call backend.use())"
        )
    return key


def _check_dtype(dtype) -> numpy.dtype:
    try:
        dt = numpy.dtype(dtype)
    except TypeError as exc:
        raise ValueError(
            f"unknown dtype {dtype!r}; valid values are {', '.join(VALID_DTYPES)}"
        ) from exc
    if dt.name not in VALID_DTYPES:
        raise ValueError(
            f"unsupported dtype {dt.name!r}; valid values are {', '.join(VALID_DTYPES)}"
        )
    return dt


def use(backend_name: str) -> None:
    """Switch the active backend for everything created from now on."""
    global xp, name
    key = _check_name(backend_name)
    module = _import_cupy() if key == "cupy" else numpy
    xp, name = module, key
    seed(0)


def default_dtype() -> numpy.dtype:
    """The float dtype new parameters and inputs get (float32 unless asked)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    global _default_dtype
    _default_dtype = _check_dtype(dtype)


@contextlib.contextmanager
def using(backend_name: str | None = None, dtype=None):
    """Temporarily switch backend and/or default dtype (handy in tests).

    >>> with using("numpy", dtype="float64"):
    ...     model = ViT(...)
    """
    global xp, name, _default_dtype, _host_rng, _device_rng
    saved = (xp, name, _default_dtype, _host_rng, _device_rng)
    try:
        if backend_name is not None:
            use(backend_name)
        if dtype is not None:
            set_default_dtype(dtype)
        yield xp
    finally:
        xp, name, _default_dtype, _host_rng, _device_rng = saved


def seed(n: int) -> None:
    """Seed initialisation, dropout masks and shuffling in one call."""
    global _host_rng, _device_rng
    _host_rng = numpy.random.default_rng(n)
    if name == "cupy":
        _device_rng = xp.random.default_rng(n)
    else:
        _device_rng = numpy.random.default_rng([n, 1])


def host_rng() -> numpy.random.Generator:
    """NumPy generator for work done on the host (init, shuffling, augmentation)."""
    return _host_rng


class _ThreadRng(threading.local):
    generator = None                    # every thread's default: the process's generator


_thread_rng = _ThreadRng()


def device_rng():
    """Generator on the active backend (dropout masks): this thread's own if
    one was given with :func:`thread_device_rng`, else the process's."""
    return _thread_rng.generator or _device_rng


@contextlib.contextmanager
def thread_device_rng(generator):
    """Within this block, in this thread, dropout masks come from
    ``generator``: each model replica (``minivit.parallel.replicas``) draws its own,
    so the masks do not depend on which thread happens to draw first."""
    previous = _thread_rng.generator
    _thread_rng.generator = generator
    try:
        yield generator
    finally:
        _thread_rng.generator = previous


def get_rng_state() -> dict:
    """Host generator state (a plain dict), e.g. for checkpoints."""
    return _host_rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _host_rng.bit_generator.state = state


def to_numpy(array) -> numpy.ndarray:
    """Bring an array to the host as a NumPy array (no copy when already there)."""
    if isinstance(array, numpy.ndarray):
        return array
    if hasattr(array, "get"):  # cupy.ndarray
        return array.get()
    return numpy.asarray(array)


def to_device(array, dtype=None):
    """Move a host array onto the active backend, optionally casting it."""
    if dtype is not None:
        dtype = numpy.dtype(dtype)
    if name == "numpy":
        out = to_numpy(array)
        return out.astype(dtype, copy=False) if dtype is not None else out
    return xp.asarray(array, dtype=dtype)


def is_array(obj) -> bool:
    """True for a NumPy or a CuPy array."""
    return isinstance(obj, numpy.ndarray) or (
        name == "cupy" and isinstance(obj, xp.ndarray)
    )


def device_name() -> str:
    """What the active backend computes on, for a human: ``"CPU (NumPy)"``, or
    the GPU's name, e.g. ``"NVIDIA H100 80GB HBM3 (GPU 0, CuPy 13.6.0)"``."""
    if name != "cupy":
        return "CPU (NumPy)"
    runtime = xp.cuda.runtime
    dev = runtime.getDevice()
    gpu = runtime.getDeviceProperties(dev)["name"]
    if isinstance(gpu, bytes):
        gpu = gpu.decode(errors="replace")
    return f"{gpu} (GPU {dev}, CuPy {getattr(xp, '__version__', '?')})"


def synchronize() -> None:
    """Wait for queued GPU work (needed before reading a timer); no-op on CPU."""
    if name == "cupy":
        xp.cuda.Stream.null.synchronize()


# Initial choice from the environment. An unknown value or an unusable cupy
# raises here, at import, rather than silently running on the CPU.
_env_backend = os.environ.get("MINIVIT_BACKEND", "").strip()
if _env_backend:
    use(_env_backend)
_env_dtype = os.environ.get("MINIVIT_DTYPE", "").strip()
if _env_dtype:
    set_default_dtype(_env_dtype)
seed(0)
