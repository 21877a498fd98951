"""Checkpoints: exact round trip, atomic saves, clear errors."""

import os
import zipfile

import numpy as np
import pytest

from minivit import backend
from minivit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivit.module import Module, Parameter
from minivit.optim import AdamW


class Tiny(Module):
    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.cls_token = Parameter(rng.standard_normal((1, 1, 4)).astype(np.float32))
        self.head = Module()
        self.head.weight = Parameter(rng.standard_normal((3, 4)).astype(np.float32))
        self.head.bias = Parameter(rng.standard_normal(3).astype(np.float32))
        self.table = Parameter(rng.standard_normal((2, 2)), requires_grad=False)  # float64


def trained(seed=0):
    model = Tiny(seed)
    opt = AdamW(model.named_parameters(), lr=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        for p in model.parameters():
            if p.grad is not None:
                p.grad[...] = rng.standard_normal(p.shape)
        opt.step()
    return model, opt


CONFIG = {"embed_dim": 4, "depth": 1, "lr": 1e-3, "patch": [4, 4], "name": "tiny"}


def leftovers(directory):
    return sorted(f for f in os.listdir(directory) if ".tmp" in f)


def test_round_trip_exact(tmp_path):
    with backend.using():  # restores the global generators afterwards
        _round_trip(tmp_path)


def _round_trip(tmp_path):
    model, opt = trained()
    backend.seed(123)
    backend.host_rng().random(5)  # move the generator somewhere non-trivial
    rng_state = backend.get_rng_state()
    path = tmp_path / "ckpt.npz"
    out = save_checkpoint(path, model.state_dict(), opt.state_dict(), epoch=7,
                          config=CONFIG, rng_state=rng_state,
                          extra={"best_acc": 0.5, "step": np.int64(10)})
    assert out == str(path) and leftovers(tmp_path) == []
    expected_next = backend.host_rng().random(3)

    ck = load_checkpoint(path)
    assert set(ck) == {"model", "optimizer", "epoch", "config", "rng_state", "extra"}
    assert list(ck["model"]) == ["cls_token", "table", "head.weight", "head.bias"]
    for name, array in model.state_dict().items():
        assert ck["model"][name].dtype == array.dtype
        np.testing.assert_array_equal(ck["model"][name], array)
    assert ck["epoch"] == 7 and isinstance(ck["epoch"], int)
    assert ck["config"] == CONFIG
    assert ck["extra"] == {"best_acc": 0.5, "step": 10}
    assert ck["rng_state"] == rng_state  # 128-bit ints survive JSON exactly
    backend.set_rng_state(ck["rng_state"])
    np.testing.assert_array_equal(backend.host_rng().random(3), expected_next)
    # the optimizer state is bit-identical and loads into a fresh optimizer
    sd = opt.state_dict()
    assert set(ck["optimizer"]) == set(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(ck["optimizer"][key], value, err_msg=key)
    fresh = Tiny(seed=5)
    fresh.load_state_dict(ck["model"])
    opt2 = AdamW(fresh.named_parameters(), lr=0.5)
    opt2.load_state_dict(ck["optimizer"])
    assert opt2.lr == 0.01 and opt2.step_count == 2
    # a file anyone can read without pickle
    with np.load(path, allow_pickle=False) as raw:
        assert "model/head.weight" in raw.files and "metadata" in raw.files


def test_optional_parts(tmp_path):
    model = Tiny()
    path = tmp_path / "sub" / "weights_only.npz"  # parent folder created
    save_checkpoint(path, model.state_dict(), None, epoch=0, config={})
    ck = load_checkpoint(path)
    assert ck["optimizer"] is None and ck["rng_state"] is None and ck["extra"] == {}


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, Tiny(0).state_dict(), epoch=1, config=CONFIG)
    save_checkpoint(path, Tiny(1).state_dict(), epoch=2, config=CONFIG)
    ck = load_checkpoint(path)
    assert ck["epoch"] == 2
    np.testing.assert_array_equal(ck["model"]["head.bias"], Tiny(1).head.bias.data)


@pytest.mark.parametrize("where", ["savez", "replace"])
def test_crash_mid_save_keeps_previous(tmp_path, monkeypatch, where):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, Tiny(0).state_dict(), epoch=1, config=CONFIG)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        if where == "savez":  # die after writing part of the new file
            args[0].write(b"PK\x03\x04 half a zip")
        raise OSError("simulated crash (disk full / killed)")

    if where == "savez":
        monkeypatch.setattr(np, "savez", crash)
    else:
        monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, Tiny(1).state_dict(), epoch=2, config=CONFIG)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert load_checkpoint(path)["epoch"] == 1


def test_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.npz", Tiny().state_dict())
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz.*does not exist"):
        load_checkpoint(path)


def test_corrupt_files(tmp_path):
    good = tmp_path / "good.npz"
    save_checkpoint(good, Tiny().state_dict(), epoch=1, config=CONFIG)
    data = good.read_bytes()

    cases = {
        "garbage.npz": b"this is not a checkpoint\n" * 10,
        "empty.npz": b"",
        "truncated.npz": data[: len(data) // 2],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}.*corrupt") as info:
            load_checkpoint(tmp_path / name)
        assert "earlier checkpoint" in str(info.value)  # says what to do

    # a flipped byte inside an array: the zip CRC check catches it
    idx = data.index(b"model/head.weight.npy")
    flipped = bytearray(data)
    flipped[idx + 200] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="flipped.npz"):
        load_checkpoint(tmp_path / "flipped.npz")

    # a valid .npz / .npy that is not a checkpoint
    np.savez(tmp_path / "plain.npz", weight=np.ones(3))
    with pytest.raises(CheckpointError, match="plain.npz.*'metadata'"):
        load_checkpoint(tmp_path / "plain.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy"):
        load_checkpoint(tmp_path / "single.npy")
    # metadata present but incomplete
    np.savez(tmp_path / "meta.npz", metadata=np.array('{"format": "minivit-checkpoint"}'))
    with pytest.raises(CheckpointError, match="metadata lacks"):
        load_checkpoint(tmp_path / "meta.npz")


def test_save_rejects_unstorable(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(tmp_path / "c.npz", {"w": np.array([{}], dtype=object)})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "c.npz", Tiny().state_dict(), config={"f": object()})
    assert os.listdir(tmp_path) == []


def test_written_file_is_a_plain_zip(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, Tiny().state_dict(), epoch=1)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert "metadata.npy" in zf.namelist()
