"""A fake GPU for machines without one: NumPy dressed up as CuPy, with CuPy's refusals.

``FakeCuPy()`` is an array module that computes with NumPy but hands out
:class:`DeviceArray` objects, which behave like ``cupy.ndarray`` where it
matters for host/device bugs:

* they are NOT ``numpy.ndarray`` instances (``isinstance(a, np.ndarray)`` is
  False, as for a real CuPy array);
* implicit conversion to NumPy raises CuPy's own ``TypeError`` ("Implicit
  conversion to a NumPy array is not allowed. Please use `.get()` ..."):
  ``np.asarray(dev)``, ``np.array(dev)``, ``np.savez(f, x=dev)``, matplotlib;
* every NumPy function or ufunc called on them raises :class:`HostDeviceError`
  (``np.exp(dev)``, ``np.sum(dev)``, ``np.concatenate([dev])``, ``np.shape(dev)``).
  This is STRICTER than CuPy, which forwards such calls to its own function
  of the same name where one exists (NEP 13/18) and fails where none does;
  minivit's rule is that code between the host boundaries calls
  ``backend.xp``, so any NumPy call on a device array is reported;
* mixing with a host ``numpy.ndarray`` (0-d included) raises, as CuPy does
  ("Unsupported type <class 'numpy.ndarray'>"): ``dev + host``, ``host * dev``,
  ``dev += host``, ``xp.add(dev, host)``, ``xp.concatenate([dev, host])``,
  ``dev[...] = host`` (basic indexing; CuPy's ``fill`` refuses it);
* reductions and scalar indexing give 0-d device arrays, never NumPy scalars
  (``dev.sum()``, ``dev[0, 1]``), as on CuPy.

Allowed, because CuPy allows them: Python and NumPy scalars with device
arrays (``dev * 0.5``, ``np.float32(2) * dev``), operators between device
arrays, in-place operators, ``ndarray`` methods (``.sum()``, ``.reshape()``,
``.astype()``, ``.T``, ``.copy()``), ``float(dev)``, ``int(dev)``,
``bool(dev)``, ``.item()``, ``.tolist()``, ``len()``, iteration, and host
index arrays in ``dev[idx]`` / ``dev[idx] = host`` (CuPy moves those over).
``dev.get()`` returns a host ``numpy.ndarray`` copy; ``xp.asarray(host)`` and
``xp.array(host)`` copy host data in. Everything else that ``xp`` offers is
NumPy's function of the same name, run on the unwrapped arrays: ``xp.float32``,
``xp.finfo`` etc. are NumPy's own; ``xp.random.default_rng`` gives a
generator whose draws are device arrays; ``xp.cuda`` is a stub with what
minivit calls (``Stream.null.synchronize()``, ``runtime.getDeviceCount()``,
``runtime.getDevice()``, ``runtime.getDeviceProperties()``).

No threads are involved: ``minivit.parallel.threads.parallel_rows`` runs kernels directly
on any backend but NumPy, and no state is kept between calls, so there is no
"inside the fake" flag to keep per thread.

:func:`installed` switches minivit's backend to the fake for a ``with`` block;
``MINIVIT_FAKE_DEVICE=1`` makes ``tests/conftest.py`` run every test's "cupy"
case on it where no real GPU is usable.
The tests that use it, and what it cannot catch, are in
``tests/test_host_device_boundary.py``.
"""

from __future__ import annotations

import contextlib
import operator
import sys
import types

import numpy as np

from minivit import backend

# CuPy's exact message (cupy/_core/core.pyx, ndarray.__array__).
IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                       "Please use `.get()` to construct a NumPy array explicitly.")

FAKE_GPU_NAME = "Fake GPU (tests/fake_device.py)"


class HostDeviceError(TypeError, ValueError):
    """Host data mixed with device data, or NumPy called on a device array.

    A TypeError like CuPy's refusals (and a ValueError, as CuPy's ``fill``
    raises for ``dev[...] = host``), so code that catches either still sees it.
    """


def _describe(x) -> str:
    return f"numpy.ndarray shape {x.shape} dtype {x.dtype}"


def _operand(x, where: str):
    """Unwrap one argument of a device operation; refuse host arrays."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise HostDeviceError(
            f"{where}: a host {_describe(x)} was mixed with device arrays. CuPy "
            "refuses this (TypeError: Unsupported type <class 'numpy.ndarray'>); move "
            "it with backend.to_device(), or compute it with backend.xp.")
    if isinstance(x, (list, tuple)):
        items = [_operand(i, where) for i in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, dict):
        return {k: _operand(v, where) for k, v in x.items()}
    return x


def _wrap(x):
    """NumPy results -> device results (NumPy scalars become 0-d arrays, as on CuPy)."""
    if isinstance(x, np.ndarray):
        return DeviceArray._of(x)
    if isinstance(x, np.generic):
        return DeviceArray._of(np.asarray(x))
    if isinstance(x, tuple):
        items = [_wrap(i) for i in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    if isinstance(x, list):
        return [_wrap(i) for i in x]
    return x


def _call(func, where, args, kwargs):
    """Run a NumPy callable on unwrapped device arguments; wrap the result."""
    out = kwargs.get("out")
    args = _operand(args, where)
    kwargs = _operand(kwargs, where)
    result = func(*args, **kwargs)
    if isinstance(out, DeviceArray) and result is out._a:
        return out                      # keep identity: xp.f(..., out=o) is o
    return _wrap(result)


def _index(key):
    """Unwrap an index. Host index arrays and lists are allowed: CuPy moves them."""
    if isinstance(key, DeviceArray):
        return key._a
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key


def _is_advanced(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (DeviceArray, np.ndarray, list, bool)) for k in keys)


class DeviceArray:
    """An array "on the fake GPU". See the module docstring for the rules.

    Like ``cupy.ndarray(shape, dtype)``, calling the class allocates an
    uninitialised array; wrapping existing NumPy data is internal.
    """

    __slots__ = ("_a", "__weakref__")
    # NumPy ufuncs refuse the object, and NumPy's operators (ndarray and scalar
    # __add__ etc.) return NotImplemented, so Python asks our reflected
    # operators, which accept scalars and refuse host arrays.
    __array_ufunc__ = None
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, order="C"):
        self._a = np.empty(shape, dtype=dtype, order=order)

    @classmethod
    def _of(cls, array: np.ndarray) -> "DeviceArray":
        obj = cls.__new__(cls)
        obj._a = array
        return obj

    # -- the host boundary ----------------------------------------------------
    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        """A host copy (``cupy.ndarray.get``)."""
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def __array_function__(self, func, types, args, kwargs):
        raise HostDeviceError(
            f"{func.__module__}.{func.__name__}() was called on a device array. "
            f"Between the host boundaries minivit calls backend.xp.{func.__name__}() "
            "(or an array method); to work on the host, bring the array over with "
            "backend.to_numpy() first. (Real CuPy forwards this call to its own "
            "function of that name where one exists, and fails where none does.)")

    # -- attributes -------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray._of(self._a.T))

    def __getattr__(self, name):
        # Only called for what is not defined above: ndarray methods and the
        # rest. Special names are refused so that NumPy finds no
        # __array_interface__ / __array_struct__ / buffer to convert through.
        if name.startswith("__") or name == "_a":
            raise AttributeError(name)
        value = getattr(self._a, name)
        if not callable(value):
            return _wrap(value)

        def method(*args, **kwargs):
            return _call(value, f"DeviceArray.{name}()", args, kwargs)

        method.__name__ = name
        return method

    # -- Python protocols ---------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __copy__(self):
        return DeviceArray._of(self._a.copy())

    def __deepcopy__(self, memo):
        return DeviceArray._of(self._a.copy())

    def __reduce__(self):
        raise TypeError("the fake device does not pickle arrays; use .get()")

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim > 0 and not _is_advanced(key):
            raise HostDeviceError(
                f"dev[...] = host: a host {_describe(value)} was assigned into a device "
                "array with basic indexing. CuPy refuses this (ValueError: non-scalar "
                "numpy.ndarray cannot be used for fill); use backend.to_device() first.")
        if isinstance(value, DeviceArray):
            value = value._a
        elif isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        self._a[_index(key)] = value

    def __neg__(self):
        return DeviceArray._of(-self._a)

    def __pos__(self):
        return self

    def __abs__(self):
        return DeviceArray._of(abs(self._a))

    def __invert__(self):
        return DeviceArray._of(~self._a)


def _binary(op, symbol):
    def forward(self, other):
        return _wrap(op(self._a, _operand(other, f"device {symbol} other")))

    def reflected(self, other):
        return _wrap(op(_operand(other, f"other {symbol} device"), self._a))

    return forward, reflected


def _inplace(iop, symbol):
    def inplace(self, other):
        result = iop(self._a, _operand(other, f"device {symbol}= other"))
        assert result is self._a      # NumPy updates in place
        return self

    return inplace


for _name, _op, _iop, _sym in [
    ("add", operator.add, operator.iadd, "+"),
    ("sub", operator.sub, operator.isub, "-"),
    ("mul", operator.mul, operator.imul, "*"),
    ("matmul", operator.matmul, operator.imatmul, "@"),
    ("truediv", operator.truediv, operator.itruediv, "/"),
    ("floordiv", operator.floordiv, operator.ifloordiv, "//"),
    ("mod", operator.mod, operator.imod, "%"),
    ("pow", operator.pow, operator.ipow, "**"),
    ("and", operator.and_, operator.iand, "&"),
    ("or", operator.or_, operator.ior, "|"),
    ("xor", operator.xor, operator.ixor, "^"),
    ("lshift", operator.lshift, operator.ilshift, "<<"),
    ("rshift", operator.rshift, operator.irshift, ">>"),
]:
    _fwd, _rev = _binary(_op, _sym)
    setattr(DeviceArray, f"__{_name}__", _fwd)
    setattr(DeviceArray, f"__r{_name}__", _rev)
    setattr(DeviceArray, f"__i{_name}__", _inplace(_iop, _sym))

for _name, _op, _sym in [("lt", operator.lt, "<"), ("le", operator.le, "<="),
                         ("gt", operator.gt, ">"), ("ge", operator.ge, ">="),
                         ("eq", operator.eq, "=="), ("ne", operator.ne, "!=")]:
    setattr(DeviceArray, f"__{_name}__", _binary(_op, _sym)[0])
DeviceArray.__divmod__, DeviceArray.__rdivmod__ = _binary(divmod, "divmod")
del _name, _op, _iop, _sym, _fwd, _rev


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------
class _DeviceFunction:
    """A NumPy function or ufunc, run on the fake device."""

    def __init__(self, func, qualname):
        self._func, self.__name__ = func, qualname.rsplit(".", 1)[-1]
        self._qualname = qualname

    def __call__(self, *args, **kwargs):
        return _call(self._func, f"{self._qualname}()", args, kwargs)

    def __getattr__(self, name):          # ufunc methods: reduce, outer, at, ...
        value = getattr(self._func, name)
        if callable(value) and not isinstance(value, type):
            return _DeviceFunction(value, f"{self._qualname}.{name}")
        return value

    def __repr__(self):
        return f"<fake device function {self._qualname}>"


def _unwrap_nested(obj):
    """Device arrays inside lists/tuples -> their data (for ``xp.asarray([...])``)."""
    if isinstance(obj, DeviceArray):
        return obj._a
    if isinstance(obj, (list, tuple)):
        return [_unwrap_nested(i) for i in obj]
    return obj


def _transfer(func, qualname):
    """``xp.asarray`` / ``xp.array``: host data is copied in, device data kept
    (``asarray``) or copied (``array``)."""

    def transfer(obj, dtype=None, **kwargs):
        if isinstance(obj, DeviceArray):
            return _wrap(func(obj._a, dtype, **kwargs))
        # A copy, as a host-to-device transfer makes: later host writes stay there.
        kwargs.pop("copy", None)
        return DeviceArray._of(np.array(_unwrap_nested(obj), dtype=dtype, copy=True,
                                        **kwargs))

    transfer.__name__ = qualname.rsplit(".", 1)[-1]
    return transfer


class _FakeModule(types.ModuleType):
    """Forwards to a NumPy module: functions run on the device, types and
    constants pass through unchanged."""

    def __init__(self, qualname, target):
        super().__init__(qualname)
        self._target = target

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._target, name)     # AttributeError as on a real module
        if isinstance(value, types.ModuleType):
            wrapped = _FakeModule(f"{self.__name__}.{name}", value)
        elif isinstance(value, type) or not callable(value):
            return value                        # dtypes, finfo, constants
        else:
            wrapped = _DeviceFunction(value, f"{self.__name__}.{name}")
        setattr(self, name, wrapped)            # cache
        return wrapped


class _FakeGenerator:
    """``xp.random.default_rng(seed)``: draws land on the device."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        value = getattr(self._rng, name)
        if callable(value):
            return _DeviceFunction(value, f"cupy.random.Generator.{name}")
        return value


class _Stream:
    def synchronize(self) -> None:
        pass


class _Runtime:
    @staticmethod
    def getDeviceCount() -> int:
        return 1

    @staticmethod
    def getDevice() -> int:
        return 0

    @staticmethod
    def getDeviceProperties(device: int) -> dict:
        return {"name": FAKE_GPU_NAME.encode()}


class FakeCuPy(_FakeModule):
    """The fake ``cupy`` module (see the module docstring)."""

    ndarray = DeviceArray
    __version__ = "0.0-fake"

    def __init__(self):
        super().__init__("cupy", np)
        self.asarray = _transfer(np.asarray, "cupy.asarray")
        self.array = _transfer(np.array, "cupy.array")
        self.asanyarray = self.asarray
        self.asnumpy = lambda a, *args, **kwargs: (
            a.get() if isinstance(a, DeviceArray) else np.asarray(a))
        self.random = _FakeModule("cupy.random", np.random)
        self.random.default_rng = _FakeGenerator
        self.random.Generator = _FakeGenerator
        self.cuda = types.SimpleNamespace(
            Stream=types.SimpleNamespace(null=_Stream()),
            runtime=_Runtime(),
            is_available=lambda: True,
        )


@contextlib.contextmanager
def installed(dtype=None):
    """Run minivit on the fake device inside the block, then restore everything.

    The fake stands in ``sys.modules["cupy"]``, and the block runs inside
    minivit's own ``backend.using("cupy")``: ``backend.use`` imports it
    through the real ``_import_cupy`` checks and seeds it, as it would CuPy.
    Yields the fake module (``backend.xp``).
    """
    fake = FakeCuPy()
    saved = sys.modules.get("cupy", _ABSENT)
    sys.modules["cupy"] = fake
    try:
        with backend.using("cupy", dtype=dtype) as xp:
            assert xp is fake and backend.name == "cupy"
            yield xp
    finally:
        if saved is _ABSENT:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved


_ABSENT = object()
