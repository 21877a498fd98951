"""The dataset registry: where each dataset comes from, how to check and parse it.

==================  =====================  ============  =============================
name                files                  format        images
==================  =====================  ============  =============================
``mnist``           4 IDX files (``.gz``)  IDX           uint8 (N, 28, 28), 10 digits
``fashion-mnist``   4 IDX files (``.gz``)  IDX           uint8 (N, 28, 28), 10 garments
``cifar10``         6 batches in one       CIFAR pickle  uint8 (N, 3, 32, 32), 10 classes
                    ``.tar.gz`` archive
==================  =====================  ============  =============================

Your own images (one subfolder per class) need no registry entry:
:func:`load_image_folder`.

:func:`load_dataset` finds the folder (:func:`find_data_dir`), downloads what
is missing (:func:`download`), checks the md5 of every file's content and
parses it, returning ``(x_train, y_train, x_test, y_test)`` as host arrays.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from minivit.atomic import atomic_write
from minivit.data.download import (
    DataError,
    cache_root,
    content_md5,
    fetch_first,
    file_error,
    md5_bytes,
    md5sum,
    read_content,
)
from minivit.data.formats import parse_cifar_batch, parse_idx, read_image_folder

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "FILE_NAMES",
    "MNIST_MEAN",
    "MNIST_STD",
    "FASHION_MEAN",
    "FASHION_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "get_dataset_info",
    "find_data_dir",
    "dataset_files",
    "verify_file",
    "verify_md5",
    "download",
    "load_dataset",
    "ImageFolderData",
    "load_image_folder",
]

# The four standard IDX file names (without ``.gz``), in the order
# load_dataset returns them.
FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Per-pixel statistics of the training sets, on the [0, 1] scale.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)     # per channel: red, green, blue
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

FORMATS = ("idx", "cifar-pickle")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, fetch, check, parse and normalise one dataset.

    Attributes:
        name: registry key, also the name of its folder in the cache.
        format: ``"idx"`` or ``"cifar-pickle"``.
        mirrors: base URLs, tried in turn.
        content_md5: file name -> md5 of its content (decompressed bytes for
            a ``.gz``), so a recompressed copy of the same data verifies.
        mean, std: normalisation on the [0, 1] scale; a float, or one value
            per channel.
        class_names: label -> name.
        train_files, test_files: the files of each split. IDX: (images,
            labels); CIFAR: the batch files.
        n_train, n_test: images per split (checked).
        image_shape: (C, H, W) of one image.
        archive: for datasets served as one archive (CIFAR), its file name;
            None when each file is served on its own as ``<name>.gz`` (IDX).
        archive_md5: md5 of the archive file as served.
        archive_dir: folder inside the archive (and in the data folder) that
            holds the files.
        system_dirs: folders a system package installs (checked after
            MINIVIT_DATA, before the cache).
        light_on_dark: the images are light, centred objects on a dark
            background (MNIST-style): a new image is padded rather than
            stretched, and inverted when it is dark on light (predict.py).

    Tests build their own with ``dataclasses.replace`` (local mirrors, small
    counts, their own checksums).
    """

    name: str
    format: str
    mirrors: tuple[str, ...]
    content_md5: Mapping[str, str]
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    class_names: tuple[str, ...]
    train_files: tuple[str, ...] = FILE_NAMES[:2]
    test_files: tuple[str, ...] = FILE_NAMES[2:]
    n_train: int = 60000
    n_test: int = 10000
    image_shape: tuple[int, int, int] = (1, 28, 28)
    archive: str | None = None
    archive_md5: str | None = None
    archive_dir: str = ""
    system_dirs: tuple[str, ...] = ()
    light_on_dark: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown dataset format {self.format!r}; one of {FORMATS}")

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        format="idx",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        # md5 of the decompressed IDX files (the published .gz files are
        # f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...).
        content_md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mean=MNIST_MEAN,
        std=MNIST_STD,
        class_names=tuple(str(d) for d in range(10)),
        light_on_dark=True,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        format="idx",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        # md5 of the decompressed IDX files: the same for the original .gz
        # files (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) and for
        # Debian's recompressed ones (cf8536b0..., 10bea18f..., f78720b4..., 0d30e22e...).
        content_md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mean=FASHION_MEAN,
        std=FASHION_STD,
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        light_on_dark=True,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        format="cifar-pickle",
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        content_md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        class_names=("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck"),
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        n_train=50000,
        n_test=10000,
        image_shape=(3, 32, 32),
        archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        archive_dir="cifar-10-batches-py",
    ),
}

_ALIASES = {"fashion": "fashion-mnist", "cifar-10": "cifar10"}


def get_dataset_info(dataset: str | DatasetInfo) -> DatasetInfo:
    """Look a dataset up by name (``mnist``, ``fashion-mnist``/``fashion_mnist``,
    ``cifar10``/``cifar-10``). A :class:`DatasetInfo` is passed through."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    key = str(dataset).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; valid names are {', '.join(DATASETS)} "
            "(or your own images: --dataset imagefolder --data-dir DIR)")
    return DATASETS[key]


# --------------------------------------------------------------------------
# Where the files live
# --------------------------------------------------------------------------
def dataset_files(dataset: str | DatasetInfo, folder) -> dict[str, Path | None]:
    """Map each of the dataset's file names to its path in ``folder``, or None.

    IDX files may be gzipped (``<name>.gz``, preferred) or not; CIFAR batches
    are looked for in the archive's folder and in ``folder`` itself.
    """
    info = get_dataset_info(dataset)
    folder = Path(folder)
    found: dict[str, Path | None] = {}
    for base in info.files:
        if info.archive is None:
            candidates = (folder / f"{base}.gz", folder / base)
        else:
            candidates = (folder / info.archive_dir / base, folder / base)
        found[base] = next((c for c in candidates if c.is_file()), None)
    return found


def _has_all_files(info: DatasetInfo, folder) -> bool:
    return all(p is not None for p in dataset_files(info, folder).values())


def find_data_dir(dataset: str | DatasetInfo = "mnist", data_dir=None) -> Path:
    """Decide which folder holds (or will hold) ``dataset``'s files.

    Resolution order, first match wins:

    1. ``data_dir`` when given;
    2. the environment variable ``MINIVIT_DATA``: its ``<dataset>``
       subfolder if that exists (one variable for several datasets),
       otherwise the folder itself;
    3. the dataset's system folders (``/usr/share/datasets/fashion-mnist``
       for Fashion-MNIST), only if they hold all the files;
    4. the user cache ``$XDG_CACHE_HOME/minivit/<dataset>``, by default
       ``~/.cache/minivit/<dataset>``.

    The folder is not created here; :func:`download` does that.
    """
    info = get_dataset_info(dataset)
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("MINIVIT_DATA", "").strip()
    if env:
        root = Path(env).expanduser()
        sub = root / info.name
        return sub if sub.is_dir() else root
    for system_dir in info.system_dirs:
        if _has_all_files(info, system_dir):
            return Path(system_dir)
    return cache_root() / "minivit" / info.name


# --------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------
def _check_md5(path, expected: str | None, actual: str, what: str = "content") -> None:
    if expected and actual != expected.lower():
        raise file_error(path, f"md5 of its {what} mismatch: expected {expected}, found {actual} "
                               "(the file holds other data than the dataset's, or is damaged)")


def verify_md5(path, expected: str) -> None:
    """Raise DataError naming the file and both digests unless the md5 of the
    file's bytes as stored (not decompressed: for archives) is ``expected``."""
    _check_md5(path, expected, md5sum(path), what="bytes")


def verify_file(info: DatasetInfo, base: str, path) -> None:
    """Raise DataError unless the content of ``path`` is the dataset's file ``base``.

    The md5 is taken over the decompressed bytes, so the original ``.gz``, a
    recompressed copy and a gunzipped file all pass.
    """
    _check_md5(path, info.content_md5.get(base), content_md5(path))


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------
def _offline_hint(info: DatasetInfo, folder: Path) -> str:
    what = info.archive or ", ".join(f"{b}.gz" for b in info.files)
    return (f"Without internet access, copy {what} into a folder of your own and pass it "
            f"with --data-dir (or set MINIVIT_DATA, e.g. `export MINIVIT_DATA=/path/to/"
            f"{info.name}`), or put the files in {folder}.")


def _extract_members(info: DatasetInfo, archive: Path, folder: Path, names) -> None:
    """Extract ``names`` from the tar archive into ``folder/archive_dir``, each
    checked and renamed into place (atomic), never following paths out of it."""
    target = folder / info.archive_dir
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for base in names:
                member = members.get(base)
                if member is None:
                    raise file_error(archive, f"the archive has no file {base} (it holds "
                                              f"{', '.join(sorted(members)) or 'no files'})")
                raw = tar.extractfile(member).read()
                _check_md5(f"{archive}:{member.name}", info.content_md5.get(base),
                           md5_bytes(raw))
                with atomic_write(target / base) as out:
                    out.write(raw)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise file_error(archive, f"not a readable tar archive ({exc})") from exc


def download(
    dataset: str | DatasetInfo = "mnist",
    folder=None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    quiet: bool = False,
) -> Path:
    """Make sure ``folder`` holds the dataset's files, fetching what is missing.

    Args:
        dataset: a registry name or a :class:`DatasetInfo`.
        folder: destination (created if needed); default :func:`find_data_dir`.
        mirrors: base URLs tried in turn; default the registry's mirrors.
        timeout: seconds for each connection / read.
        quiet: no progress lines on stderr.

    Files already there are content-checked and kept. An IDX file is fetched
    as ``<name>.gz``; a CIFAR archive is fetched (unless already in
    ``folder``), checked, and its batches extracted and checked.

    Returns:
        The folder.

    Raises:
        DataError: a present file fails its check, or no mirror could
            deliver a missing file (the message lists the mirrors and errors).
    """
    info = get_dataset_info(dataset)
    folder = find_data_dir(info) if folder is None else Path(folder).expanduser()
    mirrors = tuple(info.mirrors if mirrors is None else mirrors)

    present = dataset_files(info, folder)
    for base, path in present.items():
        if path is not None:
            verify_file(info, base, path)
    missing = [base for base, path in present.items() if path is None]
    if not missing:
        return folder

    offline = _offline_hint(info, folder)
    if info.archive is None:
        for base in missing:
            fetch_first(f"{base}.gz", mirrors, folder,
                        lambda tmp, base=base: verify_file(info, base, tmp),
                        info.name, offline, timeout, quiet)
        return folder

    archive = folder / info.archive
    if archive.is_file():
        _check_md5(archive, info.archive_md5, md5sum(archive), "archive")
    else:
        fetch_first(info.archive, mirrors, folder,
                    lambda tmp: _check_md5(tmp, info.archive_md5, md5sum(tmp), "archive"),
                    info.name, offline, timeout, quiet)
    _extract_members(info, archive, folder, missing)
    return folder


# load_dataset's ``download`` flag hides the function inside it; keep a handle.
_download = download


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def _parse_split(info: DatasetInfo, bases, files, count: int, verify: bool):
    """Read, check and parse the files ``bases`` of one split -> (images, labels)."""
    paths = [files[b] for b in bases]
    raws = []
    for base, path in zip(bases, paths):
        raw = read_content(path)
        if verify:
            _check_md5(path, info.content_md5.get(base), md5_bytes(raw))
        raws.append((raw, path))
    if info.format == "idx":
        (img_raw, img_path), (lab_raw, lab_path) = raws
        images, labels = parse_idx(img_raw, img_path), parse_idx(lab_raw, lab_path)
        checks = ((images, img_path, (count, *info.image_shape[1:]), "images"),
                  (labels, lab_path, (count,), "labels"))
    else:
        parts = [parse_cifar_batch(raw, path, info.image_shape) for raw, path in raws]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        where = paths[0].parent
        checks = ((images, where, (count, *info.image_shape), "images"),)
    for arr, path, want, what in checks:
        if arr.shape != want:
            raise file_error(path, f"expected {what} of shape {want}, found {arr.shape}")
    if labels.size and int(labels.max()) >= len(info.class_names):
        raise file_error(paths[-1], f"label {int(labels.max())} out of range for "
                                    f"{len(info.class_names)} classes")
    return images, labels


def load_dataset(
    dataset: str | DatasetInfo = "mnist",
    data_dir=None,
    download: bool = True,
    verify: bool = True,
    quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load a dataset as host arrays, downloading it when missing.

    Args:
        dataset: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or a
            :class:`DatasetInfo`.
        data_dir: folder of the files; default :func:`find_data_dir`.
        download: fetch missing files (otherwise a missing file is an error).
        verify: md5-check the content of every file used.
        quiet: no download progress on stderr.

    Returns:
        x_train uint8 (n_train, H, W) for IDX or (n_train, C, H, W) for CIFAR,
        y_train (n_train,) integer labels, x_test, y_test likewise.
    """
    info = get_dataset_info(dataset)
    folder = find_data_dir(info, data_dir)
    files = dataset_files(info, folder)
    if any(p is None for p in files.values()):
        if not download:
            missing = ", ".join(b for b, p in files.items() if p is None)
            raise DataError(
                f"{info.name} files missing in {folder}: {missing}. Call "
                f"load_dataset(download=True), or point --data-dir (or MINIVIT_DATA) at a "
                f"folder holding them.")
        _download(info, folder, quiet=quiet)
        files = dataset_files(info, folder)
    train = _parse_split(info, info.train_files, files, info.n_train, verify)
    test = _parse_split(info, info.test_files, files, info.n_test, verify)
    return (*train, *test)


# --------------------------------------------------------------------------
# The user's own images
# --------------------------------------------------------------------------
class ImageFolderData(NamedTuple):
    """What :func:`load_image_folder` returns (host arrays)."""

    x_train: np.ndarray       # uint8 (N, C, H, W)
    y_train: np.ndarray       # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    test_source: str          # the folder the test images came from, or "held out"


def load_image_folder(root, image_size: int | None = None, channels: int = 3,
                      test_fraction: float = 0.1, seed: int = 0,
                      prepare=None) -> ImageFolderData:
    """Load a folder of the user's images for training and testing.

    Layouts (torchvision ImageFolder's, one subfolder per class):

    * ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``):
      the two splits as given;
    * ``root/<class>/*``: ``test_fraction`` of each class, drawn with
      ``seed``, is held out for testing.

    ``prepare`` replaces the resize of every image (see :func:`read_image_folder`).
    """
    root = Path(root).expanduser()
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir():
        if test_dir is None:
            raise DataError(f"{root}: has a train/ folder but no test/ (or val/) folder "
                            "beside it. Add one with the same class subfolders, or put the "
                            "class folders directly in the root to hold out a test share.")
        x_tr, y_tr, names, _ = read_image_folder(root / "train", image_size, channels,
                                                 prepare=prepare)
        if image_size is None:
            image_size = x_tr.shape[-1] if x_tr.shape[-1] == x_tr.shape[-2] else None
        x_te, y_te, _, _ = read_image_folder(test_dir, image_size, channels, names, prepare)
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise DataError(f"{test_dir}: images of shape {x_te.shape[1:]}, the training "
                            f"images are {x_tr.shape[1:]}; pass --image-size N to resize both")
        return ImageFolderData(x_tr, y_tr, x_te, y_te, names, str(test_dir))
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y, names, _ = read_image_folder(root, image_size, channels, prepare=prepare)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for k in range(len(names)):
        members = np.flatnonzero(y == k)
        n_test = int(round(test_fraction * len(members)))
        if n_test == 0 or n_test == len(members):
            raise DataError(f"{root / names[k]}: {len(members)} image(s) cannot be split into "
                            f"training and test ({test_fraction:.0%} held out); add images or "
                            "give train/ and test/ folders")
        test[rng.choice(members, n_test, replace=False)] = True
    return ImageFolderData(x[~test], y[~test], x[test], y[test], names,
                           f"held out ({test_fraction:.0%} of each class)")
