"""Datasets people have: recompressed and system copies, CIFAR-10, image folders."""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from minivit import data
from minivit.data import DataError

# The submodule, not the function of the same name that minivit.data exports.
download_mod = importlib.import_module("minivit.data.download")

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _mnist_dir() -> Path:
    root = os.environ.get("MINIVIT_DATA", "").strip()
    if not root:
        pytest.skip("MINIVIT_DATA is not set; point it at a folder with the MNIST files")
    folder = data.find_data_dir("mnist")
    if any(p is None for p in data.dataset_files("mnist", folder).values()):
        pytest.skip(f"MNIST files not found in {folder}")
    return folder


# --------------------------------------------------------------------------
# Content checksums: recompressed or gunzipped copies of the real files load
# --------------------------------------------------------------------------
def test_recompressed_mnist_copies_load(tmp_path):
    source = _mnist_dir()
    recompressed, plain = tmp_path / "recompressed", tmp_path / "plain"
    recompressed.mkdir()
    plain.mkdir()
    for base, path in data.dataset_files("mnist", source).items():
        raw = gzip.decompress(path.read_bytes())
        # another compression level and another header (a file name, a date),
        # as a repackager's gzip writes it: the archive md5 differs
        buffer = io.BytesIO()
        with gzip.GzipFile(filename=base, mode="wb", fileobj=buffer, compresslevel=1,
                           mtime=1_600_000_000) as f:
            f.write(raw)
        (recompressed / f"{base}.gz").write_bytes(buffer.getvalue())
        assert data.md5sum(recompressed / f"{base}.gz") != data.md5sum(path)
        (plain / base).write_bytes(raw)
    reference = data.load_dataset("mnist", source, download=False)
    for folder in (recompressed, plain):
        loaded = data.load_dataset("mnist", folder, download=False)
        for a, b in zip(loaded, reference):
            np.testing.assert_array_equal(a, b)


def test_changed_content_is_refused_naming_both_digests(tmp_path):
    source = _mnist_dir()
    folder = tmp_path / "mine"
    folder.mkdir()
    for base, path in data.dataset_files("mnist", source).items():
        (folder / path.name).write_bytes(path.read_bytes())
    target = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10          # one label changed: structure still valid
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist", folder, download=False)
    message = str(info.value)
    assert str(target) in message
    assert data.DATASETS["mnist"].content_md5["t10k-labels-idx1-ubyte"] in message  # expected
    assert data.content_md5(target) in message                                       # found
    assert "Delete the file" in message     # the user's own folder


# --------------------------------------------------------------------------
# Advice that is safe where the file lives
# --------------------------------------------------------------------------
def test_advice_never_says_delete_for_system_files(tmp_path, monkeypatch):
    assert not download_mod.user_can_replace("/usr/share/datasets/fashion-mnist/x.gz")
    system = tmp_path / "system-share"
    system.mkdir()
    monkeypatch.setattr(download_mod, "_SYSTEM_PREFIXES",
                        download_mod._SYSTEM_PREFIXES + (str(system) + os.sep,))
    bad = system / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")          # truncated
    with pytest.raises(DataError) as info:
        data.read_idx(bad)
    message = str(info.value)
    assert str(bad) in message and "truncated" in message
    advice = message.replace(str(tmp_path), "<tmp>").lower()   # tmp_path holds the test name
    assert "delete" not in advice and "remove" not in advice
    assert "not yours to change" in message and "--data-dir" in message


def test_advice_for_unwritable_folder(tmp_path, monkeypatch):
    path = tmp_path / "file.gz"
    path.write_bytes(b"")
    assert download_mod.user_can_replace(path)
    monkeypatch.setattr(download_mod.os, "access", lambda *a, **k: False)  # a read-only mount
    assert not download_mod.user_can_replace(path)
    assert "Delete" not in download_mod.fix_advice(path)


# --------------------------------------------------------------------------
# Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)
# --------------------------------------------------------------------------
def test_debian_fashion_mnist_package():
    if not all((DEBIAN_FASHION / f"{b}.gz").is_file() for b in data.FILE_NAMES):
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION})")
    info = data.DATASETS["fashion-mnist"]
    # The package recompressed the files: their archive md5s are not the originals'
    assert data.md5sum(DEBIAN_FASHION / "train-images-idx3-ubyte.gz") != \
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    x_train, y_train, x_test, y_test = data.load_dataset(info, DEBIAN_FASHION, download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    # download() on the system folder only checks: nothing to fetch, no mirror used
    assert data.download(info, DEBIAN_FASHION, mirrors=[], quiet=True) == DEBIAN_FASHION


def test_debian_fashion_mnist_through_the_cli(tmp_path):
    if not all((DEBIAN_FASHION / f"{b}.gz").is_file() for b in data.FILE_NAMES):
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION})")
    from examples.train_mnist import main
    trainer = main(["--dataset", "fashion-mnist", "--data-dir", str(DEBIAN_FASHION),
                    "--epochs", "1", "--train-subset", "256", "--test-subset", "128",
                    "--dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "16",
                    "--out", str(tmp_path / "run"), "--quiet"])
    assert trainer.class_names[0] == "T-shirt/top"
    assert len(trainer.history) == 1


# --------------------------------------------------------------------------
# CIFAR-10: a small archive in the real format, built here
# --------------------------------------------------------------------------
def _cifar_batch(n, seed, label_key=b"labels"):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        label_key: rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


@pytest.fixture
def cifar_archive(tmp_path):
    """(archive path, DatasetInfo for it, the batches) with 4 images per batch."""
    info = data.DATASETS["cifar10"]
    batches, md5 = {}, {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        members = list(info.files) + ["batches.meta"]
        for i, base in enumerate(members):
            batch = ({b"label_names": [n.encode() for n in info.class_names]}
                     if base == "batches.meta" else _cifar_batch(4, i))
            raw = pickle.dumps(batch, protocol=2)      # what the Python 2 original used
            batches[base], md5[base] = batch, download_mod.md5_bytes(raw)
            entry = tarfile.TarInfo(f"{info.archive_dir}/{base}")
            entry.size = len(raw)
            tar.addfile(entry, io.BytesIO(raw))
    archive = tmp_path / "www" / info.archive
    archive.parent.mkdir()
    archive.write_bytes(buffer.getvalue())
    md5.pop("batches.meta")
    fake = dataclasses.replace(info, name="fake-cifar", content_md5=md5, n_train=20, n_test=4,
                               archive_md5=data.md5sum(archive),
                               mirrors=(archive.parent.as_uri() + "/",))
    return archive, fake, batches


def test_cifar_archive_download_extract_parse(tmp_path, cifar_archive):
    archive, info, batches = cifar_archive
    folder = tmp_path / "cifar"
    x_train, y_train, x_test, y_test = data.load_dataset(info, folder, quiet=True)
    assert x_train.shape == (20, 3, 32, 32) and x_train.dtype == np.uint8
    assert x_test.shape == (4, 3, 32, 32) and y_test.shape == (4,)
    # pixel layout: 1024 red values, then green, then blue, each row by row
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(x_train[0, 0].ravel(), first[:1024])
    np.testing.assert_array_equal(x_train[0, 2, 31], first[2048 + 31 * 32: 2048 + 32 * 32])
    assert y_train[:4].tolist() == batches["data_batch_1"][b"labels"]
    assert y_test.tolist() == batches["test_batch"][b"labels"]
    assert sorted(p.name for p in (folder / info.archive_dir).iterdir()) == sorted(info.files)
    # normalisation is per channel
    x = data.normalize(x_train, info.mean, info.std)
    expected = (x_train[:, 1] / 255.0 - info.mean[1]) / info.std[1]
    np.testing.assert_allclose(x[:, 1], expected, rtol=1e-5, atol=1e-5)


def test_cifar_archive_copied_by_hand(tmp_path, cifar_archive):
    """Offline: the user drops the archive into the folder; it is extracted."""
    archive, info, _ = cifar_archive
    folder = tmp_path / "offline"
    folder.mkdir()
    (folder / info.archive).write_bytes(archive.read_bytes())
    out = data.load_dataset(dataclasses.replace(info, mirrors=()), folder, quiet=True)
    assert out[0].shape == (20, 3, 32, 32)


def test_cifar_bad_archive_and_bad_member(tmp_path, cifar_archive):
    archive, info, _ = cifar_archive
    with pytest.raises(DataError, match="md5 of its archive mismatch"):
        data.load_dataset(dataclasses.replace(info, archive_md5="0" * 32),
                          tmp_path / "a", quiet=True)
    assert not (tmp_path / "a" / info.archive).exists()          # nothing half-written
    wrong = dict(info.content_md5, test_batch="1" * 32)
    with pytest.raises(DataError, match="test_batch.*md5 of its content mismatch"):
        data.load_dataset(dataclasses.replace(info, content_md5=wrong), tmp_path / "b",
                          quiet=True)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        data.read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        data.read_cifar_batch(path)


def test_cifar_label_out_of_range(tmp_path, cifar_archive):
    _, info, _ = cifar_archive
    folder = tmp_path / "c"
    data.download(info, folder, quiet=True)
    batch = _cifar_batch(4, 0)
    batch[b"labels"][2] = 10
    raw = pickle.dumps(batch, protocol=2)
    (folder / info.archive_dir / "test_batch").write_bytes(raw)
    with pytest.raises(DataError, match="label 10 out of range"):
        data.load_dataset(info, folder, download=False, verify=False)


def test_every_preset_sets_every_value():
    """A preset missing a key would silently inherit the mnist preset's value."""
    from minivit.config import PRESETS
    keys = set(PRESETS["mnist"])
    for name, values in PRESETS.items():
        assert set(values) == keys, name


def test_presets_and_flags():
    from examples.train_mnist import parse_args
    assert parse_args([]).preset == "mnist"
    long = parse_args(["--preset", "mnist-long", "--epochs", "3"])
    assert long.patch_size == 4 and long.epochs == 3          # a flag overrides the preset
    assert parse_args(["--dataset", "fashion-mnist"]).preset == "mnist"


def test_cifar_cli_preset():
    from examples.train_mnist import model_kwargs, parse_args
    args = parse_args(["--dataset", "cifar10"])
    kwargs = model_kwargs(args, image_size=32, in_channels=3, num_classes=10)
    assert kwargs["patch_size"] == 4 and kwargs["image_size"] == 32
    assert kwargs["in_channels"] == 3


# --------------------------------------------------------------------------
# A folder of the user's own images
# --------------------------------------------------------------------------
def _write_images(folder: Path, classes=("cat", "dog"), n=5, size=(12, 10), mode="RGB"):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                folder / c / f"{i}.png")


def test_image_folder_train_test_layout(tmp_path):
    pytest.importorskip("PIL")
    _write_images(tmp_path / "train", n=4)
    _write_images(tmp_path / "test", n=2)
    got = data.load_image_folder(tmp_path, image_size=16, channels=3)
    assert got.class_names == ["cat", "dog"]
    assert got.x_train.shape == (8, 3, 16, 16) and got.x_train.dtype == np.uint8
    assert got.x_test.shape == (4, 3, 16, 16)
    assert got.y_train.tolist() == [0] * 4 + [1] * 4 and got.y_test.tolist() == [0, 0, 1, 1]
    grey = data.load_image_folder(tmp_path, image_size=8, channels=1)
    assert grey.x_train.shape == (8, 1, 8, 8)


def test_image_folder_held_out_split(tmp_path):
    pytest.importorskip("PIL")
    _write_images(tmp_path, classes=("a", "b", "c"), n=10, size=(8, 8))
    got = data.load_image_folder(tmp_path, channels=3, test_fraction=0.2, seed=0)
    assert got.x_train.shape == (24, 3, 8, 8) and got.x_test.shape == (6, 3, 8, 8)
    assert np.bincount(got.y_test).tolist() == [2, 2, 2]
    again = data.load_image_folder(tmp_path, channels=3, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(got.x_test, again.x_test)      # reproducible
    mean, std = data.channel_stats(got.x_train)
    assert len(mean) == 3 and all(0 < s < 1 for s in std)


def test_image_folder_errors_name_the_file(tmp_path):
    pytest.importorskip("PIL")
    loose = tmp_path / "loose"
    _write_images(loose, classes=("x",), n=1)
    (loose / "x" / "0.png").rename(loose / "stray.png")
    (loose / "x").rmdir()
    with pytest.raises(DataError, match=r"no class subfolders.*stray\.png"):
        data.load_image_folder(loose)

    empty = tmp_path / "empty"
    _write_images(empty, classes=("a",), n=2)
    (empty / "b").mkdir()
    with pytest.raises(DataError, match=r"empty.*b: empty class folder"):
        data.load_image_folder(empty)

    broken = tmp_path / "broken"
    _write_images(broken, n=2)
    (broken / "dog" / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match=r"bad\.png: not a readable image"):
        data.load_image_folder(broken, image_size=8)

    mixed = tmp_path / "mixed"
    _write_images(mixed, classes=("a",), n=2, size=(8, 8))
    _write_images(mixed, classes=("b",), n=2, size=(9, 8))
    with pytest.raises(DataError, match=r"0\.png: size 9x8 differs.*--image-size"):
        data.load_image_folder(mixed)
    assert data.load_image_folder(mixed, image_size=8, test_fraction=0.5).x_train.shape[1:] \
        == (3, 8, 8)

    extra = tmp_path / "extra"
    _write_images(extra / "train", classes=("a", "b"), n=2)
    _write_images(extra / "test", classes=("a", "zebra"), n=1)
    with pytest.raises(DataError, match=r"zebra.*not among the training classes"):
        data.load_image_folder(extra, image_size=8)

    no_test = tmp_path / "no-test"
    _write_images(no_test / "train", n=2)
    with pytest.raises(DataError, match="no test/"):
        data.load_image_folder(no_test)


def test_gzip_header_variants_are_content_checked(tmp_path):
    """A zlib stream is not gzip: it is read as raw bytes and fails the content check."""
    raw = b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02"
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw, compresslevel=9))
    (tmp_path / "b").write_bytes(zlib.compress(raw))
    assert data.content_md5(tmp_path / "a.gz") == download_mod.md5_bytes(raw)
    assert data.content_md5(tmp_path / "b") != download_mod.md5_bytes(raw)


def test_public_names_of_the_old_module_still_import(tmp_path):
    from minivit.data import IDX_IMAGES, IDX_LABELS, verify_md5
    assert (IDX_LABELS, IDX_IMAGES) == (2049, 2051)
    path = tmp_path / "blob"
    path.write_bytes(b"minivit")
    verify_md5(path, download_mod.md5_bytes(b"minivit"))
    with pytest.raises(DataError, match=r"blob.*expected 0+, found [0-9a-f]{32}"):
        verify_md5(path, "0" * 32)
