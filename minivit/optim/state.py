"""An optimizer's state as a flat dict of NumPy values, and back.

``flatten_state`` builds the layout documented in ``Optimizer.state_dict``;
``restore_state`` checks a saved one against an optimizer (same class, same
param groups and parameter names, complete state of the right shapes) and
only then applies it. Both work on any ``Optimizer`` subclass through its
``defaults``, ``_extra_group_keys``, ``_state_keys`` and ``_counters``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy

from minivit import backend

__all__ = ["flatten_state", "restore_state"]


def _host_copy(array) -> numpy.ndarray:
    """A NumPy copy that shares no memory with ``array`` (NumPy or CuPy)."""
    out = backend.to_numpy(array)
    return out.copy() if out is array else out


def _as_hyper(value, like):
    """Convert a hyperparameter to the Python type of its default (floats stay
    Python floats: a NumPy float64 scalar would upcast float32 math)."""
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, tuple):
        return tuple(float(v) for v in numpy.asarray(value).reshape(-1))
    return float(value)


def flatten_state(optimizer) -> dict:
    """``optimizer.state_dict()``: host copies, ready for ``np.savez``."""
    out = {
        "optimizer": numpy.str_(type(optimizer).__name__),
        "step": numpy.int64(optimizer.step_count),
        "num_groups": numpy.int64(len(optimizer.param_groups)),
    }
    for i, group in enumerate(optimizer.param_groups):
        out[f"group.{i}.params"] = numpy.array(group["names"], dtype=str)
        for key in (*optimizer.defaults, *optimizer._extra_group_keys):
            if key in group:
                out[f"group.{i}.{key}"] = numpy.array(group[key])[()]
    for pkey, st in optimizer.state.items():
        for name, value in st.items():
            if name in optimizer._counters:
                out[f"state.{pkey}.{name}"] = numpy.int64(value)
            else:
                out[f"state.{pkey}.{name}"] = _host_copy(value)
    return out


def restore_state(optimizer, state_dict: Mapping) -> None:
    """``optimizer.load_state_dict(state_dict)``: check everything, then apply.

    Raises ValueError at once for a state_dict of another optimizer class;
    otherwise collects every mismatch into one ValueError and changes nothing.
    """
    sd = dict(state_dict)
    cls = type(optimizer).__name__
    state_keys, counters = optimizer._state_keys, optimizer._counters
    errors: list[str] = []

    def need(key):
        if key not in sd:
            errors.append(f"missing key {key!r}")
            return None
        return sd[key]

    kind = need("optimizer")
    if kind is not None and str(kind) != cls:
        raise ValueError(f"this state_dict is for a {kind} optimizer, not {cls}; "
                         f"create a {kind} to load it")
    step_count = need("step")
    num_groups = need("num_groups")
    if num_groups is not None and int(num_groups) != len(optimizer.param_groups):
        errors.append(f"saved {int(num_groups)} param group(s), this optimizer "
                      f"has {len(optimizer.param_groups)}")
    params = {}  # key -> Parameter
    hyper = []   # per group: {key: value}
    for i, group in enumerate(optimizer.param_groups):
        params.update(zip(group["names"], group["params"]))
        saved = need(f"group.{i}.params")
        if saved is not None:
            saved = [str(k) for k in numpy.asarray(saved).reshape(-1)]
            if saved != group["names"]:
                gone = [k for k in group["names"] if k not in saved]
                new = [k for k in saved if k not in group["names"]]
                detail = (f"; missing from the saved group: {gone}" if gone else "") + (
                    f"; not in this optimizer: {new}" if new else "")
                errors.append(f"group {i} parameters differ from the saved "
                              f"ones{detail or ' (order differs)'}")
        values = {}
        for key, default in optimizer.defaults.items():
            value = need(f"group.{i}.{key}")
            if value is not None:
                values[key] = _as_hyper(value, default)
        if f"group.{i}.lr_scale" in sd:
            values["lr_scale"] = float(sd[f"group.{i}.lr_scale"])
        hyper.append(values)
    # per-parameter state: state.<key>.<buffer>, key may contain dots
    new_state: dict[str, dict] = {}
    unknown, broken = [], set()
    for skey, value in sd.items():
        if not skey.startswith("state."):
            continue
        pkey, _, name = skey[len("state."):].rpartition(".")
        if pkey not in params:
            if pkey not in unknown:
                unknown.append(pkey)
            continue
        if name not in state_keys:
            errors.append(f"unknown state entry {skey!r} (a {cls} keeps "
                          f"{list(state_keys)})")
            continue
        if name in counters:
            new_state.setdefault(pkey, {})[name] = int(value)
            continue
        value = backend.to_numpy(value)
        shape = tuple(params[pkey].data.shape)
        if tuple(value.shape) != shape:
            errors.append(f"{skey}: expected shape {shape}, got {tuple(value.shape)}")
            broken.add(pkey)
            continue
        new_state.setdefault(pkey, {})[name] = value
    if unknown:
        errors.append(f"state for parameter(s) not in this optimizer: {unknown}")
    for pkey, st in new_state.items():
        if pkey not in broken and set(st) != set(state_keys):
            errors.append(f"incomplete state for {pkey!r}: has {sorted(st)}, "
                          f"needs {sorted(state_keys)}")
    if errors:
        raise ValueError(
            f"{cls} state_dict does not fit this optimizer:\n  "
            + "\n  ".join(errors)
            + "\n  (build the model and the param groups the way they were "
            "when the state was saved)"
        )
    # all checks passed: apply (copies, in each parameter's dtype)
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)
    optimizer.step_count = int(step_count)
    optimizer.state = {}
    for pkey, st in new_state.items():
        dtype = params[pkey].data.dtype
        optimizer.state[pkey] = {
            name: (value if name in counters else
                   backend.to_device(numpy.array(value, dtype=dtype, copy=True)))
            for name, value in st.items()
        }
