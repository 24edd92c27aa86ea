"""Datasets and mini-batch loading.

``MNIST`` and ``FashionMNIST`` read the original IDX gz files from ``<root>/<folder>/``, verify
their md5s and fetch missing ones from ``$MINIDL_DATA_MIRROR/<folder>/`` (a local folder or a URL
base) and then from the public mirrors. ``DataLoader`` cuts NumPy mini-batches from any dataset
with an ``arrays()`` method, e.g. ``ArrayDataset(x, y)``.
"""
from .datasets import (
    MIRROR_ENV,
    ArrayDataset,
    ChecksumError,
    Dataset,
    DatasetFormatError,
    DownloadError,
    FashionMNIST,
    FileDataset,
    IDXImageDataset,
    MNIST,
    RemoteFile,
    read_idx,
)
from .loader import DataLoader

__all__ = [
    "MNIST",
    "FashionMNIST",
    "DataLoader",
    "Dataset",
    "ArrayDataset",
    "FileDataset",
    "IDXImageDataset",
    "RemoteFile",
    "read_idx",
    "ChecksumError",
    "DatasetFormatError",
    "DownloadError",
    "MIRROR_ENV",
]
