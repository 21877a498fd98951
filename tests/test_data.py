"""Tests for minivit.data: IDX files, downloads, data folders, batches, augmentation.

The download tests run a real HTTP server on 127.0.0.1 (port 0) serving small
fake IDX files; nothing here touches the internet. The one test on real MNIST
reads the folder named by MINIVIT_DATA and is skipped when it is not set.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from minivit import data
from minivit.data import DataError

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------
N_TRAIN, N_TEST = 12, 5


@pytest.fixture
def fake_arrays():
    """Small MNIST-shaped arrays, keyed by the standard file names."""
    rng = np.random.default_rng(123)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


@pytest.fixture
def served(tmp_path, fake_arrays, monkeypatch):
    """An HTTP server on 127.0.0.1 serving the fake files as ``<name>.gz``.

    Yields (base_url, content-md5 table, served folder). ``/short/<name>.gz``
    announces the full length but hangs up halfway (an interrupted download).
    """
    root = tmp_path / "www"
    root.mkdir()
    md5 = {}
    for base, arr in fake_arrays.items():
        path = data.write_idx(root / f"{base}.gz", arr)
        md5[base] = data.content_md5(path)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            if self.path.startswith("/short/"):
                body = (root / self.path[len("/short/"):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            super().do_GET()

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval makes shutdown() quick (the default waits 0.5 s).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    # A proxy configured in the environment must not intercept 127.0.0.1.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", md5, root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port_url():
    """A URL on a port that was just closed: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def dead_mirror():
    return _closed_port_url()


def fake_info(md5, mirrors=(), **changes):
    """A registry entry like MNIST's but with the test's md5s, mirrors and counts."""
    return dataclasses.replace(
        data.DATASETS["mnist"], name="fake-mnist", content_md5=dict(md5), mirrors=tuple(mirrors),
        n_train=N_TRAIN, n_test=N_TEST, **changes,
    )


def leftovers(folder: Path):
    """Names in ``folder`` that are not a complete dataset file (temp/partial files)."""
    good = {f"{b}.gz" for b in data.FILE_NAMES}
    return sorted(p.name for p in folder.iterdir() if p.name not in good)


# --------------------------------------------------------------------------
# IDX reading and writing
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    img_path = data.write_idx(tmp_path / name, images)
    lab_path = data.write_idx(tmp_path / ("labels-" + name), labels)
    assert (img_path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")

    got_images, got_labels = data.read_idx(img_path), data.read_idx(lab_path)
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] ^= 1  # the caller owns a writable array


def test_idx_header_layout(tmp_path):
    """Big-endian magic then one uint32 per dimension, then the raw bytes."""
    labels = np.arange(3, dtype=np.uint8)
    raw = data.write_idx(tmp_path / "l", labels).read_bytes()
    assert raw == (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([0, 1, 2])


def test_gzip_detected_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    gz_no_suffix = data.write_idx(tmp_path / "labels", labels, compress=True)
    plain_with_suffix = data.write_idx(tmp_path / "labels.gz", labels, compress=False)
    np.testing.assert_array_equal(data.read_idx(gz_no_suffix), labels)
    np.testing.assert_array_equal(data.read_idx(plain_with_suffix), labels)


def _good_idx_bytes(n=4):
    return (2051).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in (n, 28, 28)) + bytes(n * 28 * 28)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\x00\x00\x08", "truncated"),
        (_good_idx_bytes()[:10], "truncated header"),
        ((2050).to_bytes(4, "big") + bytes(12), "unknown IDX magic"),
        (_good_idx_bytes()[:-1], "truncated"),
        (_good_idx_bytes() + b"\x00", "trailing data"),
        (gzip.compress(_good_idx_bytes()[:-5]), "truncated"),
        (gzip.compress(_good_idx_bytes())[:40], "corrupt gzip"),
        (b"\x1f\x8b" + b"not really gzip data", "corrupt gzip"),
    ],
    ids=["tiny", "short-header", "wrong-magic", "short-data", "extra-data",
         "gz-short-data", "gz-cut", "gz-garbage"],
)
def test_bad_idx_files_refused(tmp_path, content, problem):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    assert "MINIVIT_DATA" in message and "Delete the file" in message


def test_corrupt_gzip_crc(tmp_path):
    """A flipped byte inside the compressed stream is caught, not returned as data."""
    raw = bytearray(gzip.compress(_good_idx_bytes(), mtime=0))
    raw[len(raw) // 2] ^= 0xFF
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt gzip"):
        data.read_idx(path)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------
def test_registry():
    assert data.get_dataset_info("MNIST") is data.DATASETS["mnist"]
    assert data.get_dataset_info("fashion_mnist") is data.DATASETS["fashion-mnist"]
    assert data.get_dataset_info("CIFAR-10") is data.DATASETS["cifar10"]
    for info in data.DATASETS.values():
        assert info.mirrors
        assert set(info.content_md5) == set(info.files)
        assert all(len(v) == 32 for v in info.content_md5.values())
        assert len(info.class_names) == 10
    for name in ("mnist", "fashion-mnist"):
        assert data.DATASETS[name].files == data.FILE_NAMES
        assert len(data.DATASETS[name].mirrors) >= 2
    assert data.DATASETS["mnist"].mean == data.MNIST_MEAN == 0.1307
    assert data.DATASETS["fashion-mnist"].std == data.FASHION_STD == 0.3530
    assert data.DATASETS["fashion-mnist"].class_names[9] == "Ankle boot"
    assert data.DATASETS["cifar10"].image_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="unknown dataset.*imagefolder"):
        data.get_dataset_info("cifar100")


# --------------------------------------------------------------------------
# Downloading (local HTTP server only)
# --------------------------------------------------------------------------
def test_download_good_files(served, tmp_path, fake_arrays, capsys):
    url, md5, _ = served
    folder = tmp_path / "data" / "nested"  # created on demand
    assert data.download(fake_info(md5), folder, mirrors=[url]) == folder
    for base, arr in fake_arrays.items():
        path = folder / f"{base}.gz"
        assert data.content_md5(path) == md5[base]
        np.testing.assert_array_equal(data.read_idx(path), arr)
    assert leftovers(folder) == []
    err = capsys.readouterr().err
    assert err.count("ok (") == 4  # one progress line per file

    # Everything present: nothing fetched, nothing printed, even with no mirror.
    data.download(fake_info(md5), folder, mirrors=[], quiet=False)
    assert capsys.readouterr().err == ""


def test_download_bad_checksum_leaves_nothing(served, tmp_path):
    url, md5, _ = served
    wrong = dict(md5, **{"train-images-idx3-ubyte": "0" * 32})
    folder = tmp_path / "data"
    with pytest.raises(DataError) as info:
        data.download(fake_info(wrong), folder, mirrors=[url], quiet=True)
    message = str(info.value)
    assert "md5 of its content mismatch" in message and "0" * 32 in message
    assert md5["train-images-idx3-ubyte"] in message  # the actual digest
    assert not (folder / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(folder) == []  # no .part file


def test_download_interrupted_leaves_nothing(served, tmp_path):
    url, md5, _ = served
    folder = tmp_path / "data"
    with pytest.raises(DataError, match="Mirrors tried"):
        data.download(fake_info(md5), folder, mirrors=[url + "short/"], quiet=True)
    assert list(folder.iterdir()) == []


def test_download_dead_mirror_then_good(served, dead_mirror, tmp_path, fake_arrays, capsys):
    url, md5, _ = served
    folder = tmp_path / "data"
    data.download(fake_info(md5), folder, mirrors=[dead_mirror, url])
    assert all((folder / f"{b}.gz").is_file() for b in data.FILE_NAMES)
    assert leftovers(folder) == []
    err = capsys.readouterr().err
    assert err.count("failed") == 4 and err.count("ok (") == 4


def test_download_offline_message(dead_mirror, tmp_path, monkeypatch):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    other_dead = _closed_port_url() + "mnist/"
    folder = tmp_path / "offline"
    with pytest.raises(DataError) as info:
        data.download(fake_info({}), folder, mirrors=[dead_mirror, other_dead], quiet=True)
    message = str(info.value)
    assert str(folder) in message
    for base in data.FILE_NAMES:
        assert f"{base}.gz" in message
    assert dead_mirror in message and other_dead in message
    assert "MINIVIT_DATA" in message
    assert leftovers(folder) == []


def test_existing_file_with_bad_md5(served, tmp_path):
    url, md5, root = served
    folder = tmp_path / "data"
    data.download(fake_info(md5), folder, mirrors=[url], quiet=True)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(b"something else", mtime=0))
    with pytest.raises(DataError) as info:
        data.download(fake_info(md5), folder, mirrors=[url], quiet=True)
    message = str(info.value)
    assert str(target) in message
    assert md5["t10k-labels-idx1-ubyte"] in message  # expected
    assert data.content_md5(target) in message  # actual
    assert "Delete the file" in message  # the user's own folder: safe advice


def test_load_dataset_downloads_and_validates(served, tmp_path, fake_arrays):
    url, md5, _ = served
    folder = tmp_path / "data"
    info = fake_info(md5, mirrors=[url])
    with pytest.raises(DataError, match="missing"):
        data.load_dataset(info, folder, download=False)
    x_train, y_train, x_test, y_test = data.load_dataset(info, folder, quiet=True)
    np.testing.assert_array_equal(x_train, fake_arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, fake_arrays["t10k-labels-idx1-ubyte"])
    assert x_train.shape == (N_TRAIN, 28, 28) and x_test.shape == (N_TEST, 28, 28)
    assert y_train.shape == (N_TRAIN,) and y_train.dtype == np.uint8

    # The counts are checked: the real MNIST sizes do not match these files.
    with pytest.raises(DataError, match="expected images of shape"):
        data.load_dataset(dataclasses.replace(info, n_train=60000), folder, download=False)


def test_load_dataset_uncompressed_files(tmp_path, fake_arrays):
    """Gunzipped files verify against the same content checksums."""
    md5 = {}
    for base, arr in fake_arrays.items():
        md5[base] = data.content_md5(data.write_idx(tmp_path / base, arr))
    info = fake_info(md5)
    out = data.load_dataset(info, tmp_path, download=False)
    np.testing.assert_array_equal(out[0], fake_arrays["train-images-idx3-ubyte"])
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*md5 of its content"):
        data.load_dataset(info, tmp_path, download=False)
    # without verification the structure is still checked
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*truncated"):
        data.load_dataset(info, tmp_path, download=False, verify=False)


# --------------------------------------------------------------------------
# Data folder resolution
# --------------------------------------------------------------------------
def _fill_folder(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for base in data.FILE_NAMES:
        (folder / base).write_bytes(b"")


def test_find_data_dir_order(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("MINIVIT_DATA", raising=False)

    # 4. the user cache, under HOME or XDG_CACHE_HOME (a relative one is ignored)
    assert data.find_data_dir("mnist") == home / ".cache" / "minivit" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert data.find_data_dir("mnist") == home / ".cache" / "minivit" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.find_data_dir("mnist") == tmp_path / "xdg" / "minivit" / "mnist"
    assert data.find_data_dir("fashion_mnist").name == "fashion-mnist"

    # 3. a system folder, only when it holds the files
    system = tmp_path / "usr-share" / "fashion-mnist"
    fashion = dataclasses.replace(data.DATASETS["fashion-mnist"], system_dirs=(str(system),))
    system.mkdir(parents=True)
    assert data.find_data_dir(fashion) == tmp_path / "xdg" / "minivit" / "fashion-mnist"
    _fill_folder(system)
    assert data.find_data_dir(fashion) == system

    # 2. MINIVIT_DATA beats both; its <dataset> subfolder is used when present
    env = tmp_path / "env"
    monkeypatch.setenv("MINIVIT_DATA", str(env))
    assert data.find_data_dir(fashion) == env
    assert data.find_data_dir("mnist") == env
    (env / "mnist").mkdir(parents=True)
    assert data.find_data_dir("mnist") == env / "mnist"

    # 1. an explicit argument beats everything
    assert data.find_data_dir(fashion, tmp_path / "explicit") == tmp_path / "explicit"


def test_default_fashion_system_dir_registered():
    assert "/usr/share/datasets/fashion-mnist" in data.DATASETS["fashion-mnist"].system_dirs


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------
def test_normalize():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2)
    out = data.normalize(images, data.MNIST_MEAN, data.MNIST_STD)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    expected = (images[:, None].astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert data.normalize(images, 0.5, 0.5, dtype=np.float64).dtype == np.float64
    np.testing.assert_allclose(
        data.denormalize(out, data.MNIST_MEAN, data.MNIST_STD), images[:, None] / 255, atol=1e-6)


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------
def _batch(b=6, c=1, h=28, w=28, seed=0):
    return np.random.default_rng(seed).standard_normal((b, c, h, w)).astype(np.float32)


def test_augment_zero_is_identity():
    x = _batch()
    out = data.augment(x, np.random.default_rng(0), max_shift=0, max_rotate_deg=0.0)
    np.testing.assert_array_equal(out, x)
    # The warp itself is exact for zero and for integer shifts.
    np.testing.assert_array_equal(data.warp_affine(x, (0, 0), 0.0), x)


def test_warp_known_shift():
    x = _batch(b=2, c=2, h=8, w=9)
    out = data.warp_affine(x, [[1, 2], [-3, 0]])
    # image 0 moved down 1, right 2; image 1 moved up 3
    np.testing.assert_array_equal(out[0, :, 1:, 2:], x[0, :, :-1, :-2])
    assert not out[0, :, :1, :].any() and not out[0, :, :, :2].any()  # zero padding
    np.testing.assert_array_equal(out[1, :, :-3, :], x[1, :, 3:, :])
    assert not out[1, :, -3:, :].any()
    filled = data.warp_affine(x, [[1, 2], [-3, 0]], fill=-0.5)
    assert (filled[0, :, 0, :] == -0.5).all() and (filled[1, :, -3:, :] == -0.5).all()


@pytest.mark.parametrize("shifts,angles", [((np.nan, 0), 0.0), ((0, np.inf), 0.0),
                                           ((0, 0), [0.0, np.nan]), ((0, 0), -np.inf)])
def test_warp_refuses_shifts_and_angles_that_are_not_finite(shifts, angles):
    x = np.zeros((2, 1, 6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="finite"):
        data.warp_affine(x, shifts, angles)


def test_warp_rotation():
    x = _batch(b=1, h=7, w=7)
    # 90 degrees counter-clockwise as displayed equals np.rot90 on (H, W)
    np.testing.assert_allclose(data.warp_affine(x, (0, 0), 90.0), np.rot90(x, 1, axes=(2, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(data.warp_affine(x, (0, 0), 360.0), x, atol=1e-5)


def test_augment_random_batch():
    x = _batch(b=16)
    out = data.augment(x, np.random.default_rng(1), max_shift=2, max_rotate_deg=10.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not np.array_equal(out, x)
    again = data.augment(x, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)  # same seed, same transform
    # shift only: every image is an exact integer translation (values preserved)
    shifted = data.augment(x, np.random.default_rng(2), max_shift=3, max_rotate_deg=0.0)
    for i in range(len(x)):  # per-image check in the test only, not in augment
        assert np.isin(shifted[i][shifted[i] != 0], x[i]).all()


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------
def test_iterate_batches_covers_every_sample_once():
    x = np.arange(10, dtype=np.float32).reshape(10, 1) * 10
    y = np.arange(10)
    batches = list(data.iterate_batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0)))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]  # the partial batch is kept
    seen = np.concatenate([yb for _, yb in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert not np.array_equal(seen, y)  # actually shuffled
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb * 10)  # pairs stay aligned

    dropped = list(data.iterate_batches(x, y, 4, True, np.random.default_rng(0), drop_last=True))
    assert [len(yb) for _, yb in dropped] == [4, 4]
    ordered = list(data.iterate_batches(x, y, 3, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in ordered]), y)


def test_iterate_batches_reproducible():
    x, y = np.zeros((50, 2)), np.arange(50)

    def order(seed):
        gen = data.iterate_batches(x, y, 8, shuffle=True, rng=np.random.default_rng(seed))
        return np.concatenate([yb for _, yb in gen])

    np.testing.assert_array_equal(order(7), order(7))
    assert not np.array_equal(order(7), order(8))


def test_batch_iterator_epochs_and_augment():
    x = _batch(b=10, h=6, w=6)
    y = np.arange(10)
    it = data.BatchIterator(x, y, 4, rng=np.random.default_rng(3),
                            augment=functools.partial(data.augment, max_shift=1))
    assert len(it) == 3
    assert len(data.BatchIterator(x, y, 4, drop_last=True)) == 2
    epoch1 = [yb for _, yb in it]
    epoch2 = [yb for _, yb in it]
    assert sorted(np.concatenate(epoch1).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))  # reshuffled
    xb, _ = next(iter(it))
    assert xb.shape == (4, 1, 6, 6) and xb.dtype == np.float32
    with pytest.raises(ValueError, match="differ in length"):
        data.BatchIterator(x, y[:3], 4)


# --------------------------------------------------------------------------
# Real MNIST (only where MINIVIT_DATA points at it)
# --------------------------------------------------------------------------
def _real_mnist_dir():
    root = os.environ.get("MINIVIT_DATA", "").strip()
    if not root:
        pytest.skip("MINIVIT_DATA is not set; point it at a folder with the MNIST files")
    folder = data.find_data_dir("mnist")
    files = data.dataset_files("mnist", folder)
    if any(p is None for p in files.values()):
        pytest.skip(f"MNIST files not found in {folder} (MINIVIT_DATA={root})")
    return folder, files


def test_real_mnist():
    folder, files = _real_mnist_dir()
    for base, path in files.items():
        data.verify_file(data.DATASETS["mnist"], base, path)  # raises on mismatch
    x_train, y_train, x_test, y_test = data.load_dataset("mnist", download=False, quiet=True)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    for arr in (x_train, y_train, x_test, y_test):
        assert arr.dtype == np.uint8
    assert set(np.unique(y_train).tolist()) == set(range(10))
    assert set(np.unique(y_test).tolist()) == set(range(10))
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first digits
    # The registered statistics standardise the training set.
    x = data.normalize(x_train[:20000], data.MNIST_MEAN, data.MNIST_STD)
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02
