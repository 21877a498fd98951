"""Checkpoints: one ``.npz`` file per save, written atomically.

Layout of the file (``np.load(path)`` shows it; no pickle anywhere)::

    model/<timm name>    every weight, e.g. model/blocks.0.attn.qkv.weight
    optim/<key>          the optimizer's flat state_dict (see minivit.optim)
    metadata             0-d str array: JSON with format, version, epoch,
                         config, rng_state, extra, has_optimizer

Atomic: the file is written to a temporary file in the same directory,
flushed and fsync'ed, then renamed over the target with ``os.replace`` (an
atomic rename on POSIX and Windows). A crash or an error mid-save therefore
leaves the previous checkpoint untouched, and the temporary file is removed.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict

import numpy

from minivit import backend
from minivit.atomic import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT = "minivit-checkpoint"
VERSION = 1
META_KEY = "metadata"
MODEL_PREFIX = "model/"
OPTIM_PREFIX = "optim/"
_META_FIELDS = ("format", "version", "epoch", "config", "rng_state", "extra",
                "has_optimizer")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (corrupt, truncated, wrong kind)."""


def _json_default(obj):
    """Let numpy scalars/arrays and tuples-in-disguise into the JSON metadata."""
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, numpy.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(
        f"{type(obj).__name__} is not JSON-serialisable; config, rng_state and "
        "extra must hold plain values (numbers, strings, lists, dicts)"
    )


def _host_arrays(prefix: str, state: dict, what: str) -> dict:
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be strings, got {key!r}")
        array = numpy.asarray(backend.to_numpy(value))
        if array.dtype.hasobject:
            # np.savez would pickle it, and load_checkpoint refuses pickles
            raise TypeError(f"{what}[{key!r}] has dtype object; store numbers or "
                            "strings (arrays, scalars) only")
        out[prefix + key] = array
    return out


def save_checkpoint(path, model_state: dict, optimizer_state: dict | None = None,
                    epoch: int = 0, config: dict | None = None,
                    rng_state: dict | None = None, extra: dict | None = None) -> str:
    """Write one checkpoint ``.npz`` to ``path`` atomically; returns the path.

    Args:
        path: target file (written exactly there; parent folders are created).
        model_state: ``{timm name: array}``, e.g. ``model.state_dict()``
            (NumPy or CuPy arrays; saved as host arrays, dtype kept).
        optimizer_state: ``optimizer.state_dict()`` or None.
        epoch: number of finished epochs.
        config: the model/training configuration (JSON-able dict).
        rng_state: e.g. ``backend.get_rng_state()`` (JSON-able dict).
        extra: anything else small and JSON-able (metrics, step, ...).
    """
    path = os.fspath(path)
    arrays = _host_arrays(MODEL_PREFIX, model_state, "model_state")
    if optimizer_state is not None:
        arrays.update(_host_arrays(OPTIM_PREFIX, optimizer_state, "optimizer_state"))
    meta = {
        "format": FORMAT, "version": VERSION, "epoch": int(epoch),
        "config": {} if config is None else config,
        "rng_state": rng_state, "extra": {} if extra is None else extra,
        "has_optimizer": optimizer_state is not None,
    }
    arrays[META_KEY] = numpy.array(json.dumps(meta, default=_json_default))

    with atomic_write(path) as f:
        # a file object, not a name: np.savez would append ".npz" to a name
        numpy.savez(f, **arrays)
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``{"model": OrderedDict name -> numpy array, "optimizer": dict or
        None, "epoch": int, "config": dict, "rng_state": dict or None,
        "extra": dict}``; all arrays are host NumPy arrays.
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not an .npz, corrupt/truncated, or missing entries.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"checkpoint {path!r} does not exist; check the path (save one with "
            "minivit.checkpoint.save_checkpoint first)"
        )
    bad = (f"checkpoint {path!r} is corrupt or not a minivit checkpoint")
    fix = ("; it may be truncated (a copy or download that did not finish) or a "
           "different kind of file: re-copy it, or use an earlier checkpoint")
    # our own file object: np.load leaks its handle when the zip is broken
    with open(path, "rb") as f:
        try:
            npz = numpy.load(f, allow_pickle=False)
            if not isinstance(npz, numpy.lib.npyio.NpzFile):
                raise CheckpointError(f"{bad}: it holds a single .npy array, not "
                                      f"an .npz archive{fix}")
            with npz:
                data = {key: npz[key] for key in npz.files}  # read everything now
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            if "pickle" in str(exc):
                # numpy's "pickled data" = neither .npz nor .npy (e.g. a text
                # file); never unpickle a checkpoint, so don't suggest it
                raise CheckpointError(f"{bad}: it is not an .npz archive{fix}") from None
            raise CheckpointError(f"{bad} ({type(exc).__name__}: {exc}){fix}") from exc

    if META_KEY not in data:
        raise CheckpointError(
            f"{bad}: no {META_KEY!r} entry (an .npz not written by save_checkpoint?)"
            "; save it again with minivit.checkpoint.save_checkpoint"
        )
    try:
        meta = json.loads(str(data.pop(META_KEY)))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{bad}: the metadata is not valid JSON ({exc}){fix}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{bad}: the metadata is not a JSON object{fix}")
    missing = [k for k in _META_FIELDS if k not in meta]
    if missing:
        raise CheckpointError(f"{bad}: metadata lacks {missing}{fix}")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{bad}: metadata format is {meta['format']!r}, "
                              f"expected {FORMAT!r}")
    if int(meta["version"]) > VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {meta['version']}, newer than "
            f"this minivit reads ({VERSION}); upgrade minivit to load it")

    model = OrderedDict()
    optim = {}
    for key, value in data.items():
        if key.startswith(MODEL_PREFIX):
            model[key[len(MODEL_PREFIX):]] = value
        elif key.startswith(OPTIM_PREFIX):
            optim[key[len(OPTIM_PREFIX):]] = value
        else:
            raise CheckpointError(f"{bad}: unexpected entry {key!r}")
    if meta["has_optimizer"] and not optim:
        raise CheckpointError(f"{bad}: metadata says it has optimizer state but "
                              f"there are no 'optim/...' entries{fix}")
    return {
        "model": model,
        "optimizer": optim if meta["has_optimizer"] else None,
        "epoch": int(meta["epoch"]),
        "config": meta["config"],
        "rng_state": meta["rng_state"],
        "extra": meta["extra"],
    }
