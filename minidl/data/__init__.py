"""Datasets, batch transforms and mini-batch loading.

``MNIST``, ``FashionMNIST`` and ``CIFAR10`` read the original files from ``<root>/<folder>/``,
check them (md5s; CIFAR-10's extracted folder by structure, with a pickle reader that runs no code)
and fetch missing ones from ``$MINIDL_DATA_MIRROR/<folder>/`` (a local folder or a URL base) and
then from the public mirrors (:mod:`minidl.data.download`). ``DataLoader`` cuts NumPy mini-batches
from any dataset with an ``arrays()`` method, e.g. ``ArrayDataset(x, y)``; it is seeded, resumable
(``state_dict``) and shardable (``num_shards``, ``shard_index``), and applies batch transforms
from :mod:`minidl.data.transforms`.
"""
from . import download, transforms
from .cifar import CIFAR10, RestrictedUnpickler
from .datasets import (
    ArrayDataset,
    Dataset,
    DatasetFormatError,
    FashionMNIST,
    FileDataset,
    IDXImageDataset,
    MNIST,
    RemoteFile,
    read_idx,
)
from .download import MIRROR_ENV, ChecksumError, DownloadError, UnsafeArchiveError
from .loader import DataLoader
from .transforms import channel_mean_std

__all__ = [
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "DataLoader",
    "Dataset",
    "ArrayDataset",
    "FileDataset",
    "IDXImageDataset",
    "RemoteFile",
    "RestrictedUnpickler",
    "read_idx",
    "channel_mean_std",
    "transforms",
    "download",
    "ChecksumError",
    "DatasetFormatError",
    "DownloadError",
    "UnsafeArchiveError",
    "MIRROR_ENV",
]
