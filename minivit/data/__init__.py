"""Datasets, from files on disk to mini-batches: one concern per module.

==============================  ===============================================
module                          what it holds
==============================  ===============================================
:mod:`minivit.data.download`    mirrors, content checksums, atomic downloads,
                                errors with advice that is safe where a file lives
:mod:`minivit.data.formats`     file formats: IDX, CIFAR python pickles,
                                folders of images (one subfolder per class)
:mod:`minivit.data.datasets`    the registry (MNIST, Fashion-MNIST, CIFAR-10),
                                finding the data folder, ``load_dataset``,
                                ``load_image_folder``
:mod:`minivit.data.loader`      normalisation, shuffling, batching
:mod:`minivit.data.augment`     random shifts and rotations
==============================  ===============================================

Everything here works on the host, in NumPy; the trainer moves each batch
to the active backend with :func:`minivit.backend.to_device`. Every problem
with a file raises :class:`DataError` (a ``ValueError``) that names the file,
says what was expected and what was found, and how to fix it.

The names below are the public API: ``from minivit.data import load_dataset``.
"""

from minivit.data.augment import augment, warp_affine
from minivit.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    FASHION_MEAN,
    FASHION_STD,
    FILE_NAMES,
    MNIST_MEAN,
    MNIST_STD,
    DatasetInfo,
    ImageFolderData,
    dataset_files,
    download,
    find_data_dir,
    get_dataset_info,
    load_dataset,
    load_image_folder,
    verify_file,
    verify_md5,
)
from minivit.data.download import DataError, content_md5, md5sum
from minivit.data.formats import (
    IDX_IMAGES,
    IDX_LABELS,
    read_cifar_batch,
    read_idx,
    read_image_folder,
    write_idx,
)
from minivit.data.loader import (
    BatchIterator,
    channel_stats,
    denormalize,
    iterate_batches,
    normalize,
)

from minivit.data import datasets as _datasets

__all__ = [
    "DataError",
    *_datasets.__all__,
    "IDX_IMAGES",
    "IDX_LABELS",
    "read_idx",
    "write_idx",
    "read_cifar_batch",
    "read_image_folder",
    "md5sum",
    "content_md5",
    "normalize",
    "denormalize",
    "channel_stats",
    "warp_affine",
    "augment",
    "iterate_batches",
    "BatchIterator",
]
