"""Datasets: in-memory arrays, and datasets read from their original files (MNIST, Fashion-MNIST).

Every dataset follows one small protocol, which is all :class:`~minidl.data.DataLoader` needs:
``arrays()`` returns a tuple of NumPy arrays of equal length along axis 0 (for the image datasets
``(images, labels)``); ``len(ds)`` is that length and ``ds[i]`` is ``tuple(a[i] for a in arrays())``.

File datasets (:class:`FileDataset`) declare their original files with their md5s, a folder name
and public mirrors; the base class finds each file under ``<root>/<folder>/``, verifies its md5 and
fetches it when it is missing or wrong (see :mod:`minidl.data.download` for the sources, deadlines
and atomic placement). A subclass only declares its files and implements ``_load``.
"""
import gzip
import os
import zlib
from typing import NamedTuple

import numpy as np

from .download import ChecksumError, DownloadError, download_file, file_sources, fix_hint, md5sum


class DatasetFormatError(ValueError):
    """A dataset file is readable but not in the expected format (bad magic, sizes, shapes)."""


class RemoteFile(NamedTuple):
    """One original file of a dataset: its file name and its published md5 (hex)."""

    name: str
    md5: str


# --------------------------------------------------------------------------------------------
# The protocol and in-memory datasets
# --------------------------------------------------------------------------------------------


class Dataset:
    """Base of all datasets: equal-length arrays, indexed along their first axis.

    Subclasses implement ``arrays()``; ``len`` and indexing follow from it. Indexing accepts
    anything NumPy does on axis 0 (an int, a slice, an integer or boolean array) and returns a
    tuple with one entry per array.
    """

    def arrays(self):
        """Return the tuple of arrays (equal length along axis 0) that make up the dataset."""
        raise NotImplementedError

    def __len__(self):
        return len(self.arrays()[0])

    def __getitem__(self, index):
        arrays = self.arrays()
        try:
            return tuple(a[index] for a in arrays)
        except IndexError as exc:
            raise IndexError(f"{type(self).__name__}: bad index {index!r:.60} for {len(arrays[0])} samples "
                             f"(an int, a slice or an integer/boolean array along axis 0): {exc}") from None


class ArrayDataset(Dataset):
    """Wrap NumPy arrays of equal length as a dataset (like ``torch.utils.data.TensorDataset``).

    Args:
        *arrays (array_like): one or more arrays with the same length along axis 0, e.g.
            ``ArrayDataset(x, y)`` with ``x`` of shape ``(N, ...)`` and ``y`` of shape ``(N,)``.
            NumPy arrays are kept as they are (no copy).

    Raises:
        ValueError: no arrays, a 0-d array, or arrays of different lengths.

    Example:
        >>> ds = ArrayDataset(np.zeros((5, 3), np.float32), np.arange(5))
        >>> len(ds), ds[1][1]
        (5, 1)
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("ArrayDataset: expected at least one array")
        try:
            arrays = tuple(np.asarray(a) for a in arrays)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(f"ArrayDataset: every argument must convert to one NumPy array: {exc}") from None
        for i, a in enumerate(arrays):
            if a.ndim == 0:
                raise ValueError(f"ArrayDataset: array {i} is 0-d; every array needs a sample axis 0")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"ArrayDataset: arrays must have the same length along axis 0, got {lengths}")
        self._arrays = arrays

    def arrays(self):
        """Return the wrapped arrays as a tuple."""
        return self._arrays

    def __repr__(self):
        shapes = ", ".join(f"{a.dtype}{a.shape}" for a in self._arrays)
        return f"ArrayDataset({shapes})"


# --------------------------------------------------------------------------------------------
# The IDX format
# --------------------------------------------------------------------------------------------

# Type codes of the IDX format (third byte of the magic number), data stored big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: not a valid gzip file ({exc})") from None


def read_idx(path):
    """Read an IDX file (gzip-compressed or not) into a NumPy array.

    The IDX format, as described on the MNIST page (LeCun, Cortes & Burges; LeCun et al. 1998):
    a magic number of 4 bytes -- two zero bytes, a type code (0x08 unsigned byte, 0x09 signed
    byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and the number of dimensions --
    then one big-endian uint32 per dimension, then the data, big-endian, in C order.

    Args:
        path (str or PathLike): the file; it is decompressed when it starts with the gzip magic.
    Returns:
        np.ndarray: a writable array in native byte order with the file's dtype and shape.
    Raises:
        DatasetFormatError: broken gzip stream, bad magic number, unknown type code, no
            dimensions, a header or data size that disagrees with the dimensions (truncated or
            trailing bytes). The message names the file.
        TypeError: ``path`` is not a str or ``os.PathLike``.
    """
    path = check_path("read_idx", path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetFormatError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} (expected 0x0000TTDD with "
            f"type code TT in {{08, 09, 0b, 0c, 0d, 0e}} and DD >= 1 dimensions)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                                 f"file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "trailing bytes"
        raise DatasetFormatError(f"{path}: IDX data size mismatch ({problem}): shape {shape} of {dtype.name} "
                                 f"needs {expected} bytes after the header, found {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a copy: native order and writable


# --------------------------------------------------------------------------------------------
# Datasets read from original files
# --------------------------------------------------------------------------------------------


def check_bool(owner, name, value):
    """Return ``value`` as a bool, or raise ValueError naming ``owner`` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def check_path(owner, value, name="path", kind="file"):
    """Return ``value`` as a str path, or raise TypeError naming ``owner`` unless it is one.

    Raises:
        TypeError: ``value`` is not a str or ``os.PathLike`` giving a str.
    """
    path = value.__fspath__() if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise TypeError(f"{owner}: {name} must be a {kind} path (str or os.PathLike), got "
                        f"{type(value).__name__} {value!r:.60}")
    return path


def check_root(owner, root):
    """Return ``root`` as a str path, or raise naming ``owner`` unless it is a folder path.

    Raises:
        TypeError: ``root`` is not a str or ``os.PathLike`` (or gives bytes).
        NotADirectoryError: ``root`` exists and is not a folder.
    """
    path = check_path(owner, root, "root", "folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{owner}: root {path!r} exists and is not a folder")
    return path


class FileDataset(Dataset):
    """Base for image-classification datasets read from their original, checksummed files.

    A subclass declares:

    - ``folder`` (str): the folder under ``root`` and under ``$MINIDL_DATA_MIRROR``;
    - ``mirrors`` (tuple of str): public URL bases holding the files (``<mirror><name>``);
    - ``files`` (dict): ``{"train": {role: RemoteFile}, "test": {role: RemoteFile}}``;
    - ``classes`` (list of str): class names, indexed by label;

    and implements ``_load(paths)``, which receives ``{role: verified path}`` and returns
    ``(images, labels)``. Everything else -- finding, verifying and fetching the files, ``len``,
    indexing and ``arrays()`` -- is shared. A dataset whose files are not individually
    checksummed (CIFAR-10's extracted folder) overrides ``_prepare(download)`` instead, which
    returns ``(images, labels)`` and may set ``self.classes``.

    Args:
        root (str or PathLike): the data folder; files live in ``<root>/<folder>/``. Default ``"data"``.
        train (bool): the training split if True, else the test split.
        download (bool): fetch files that are missing or fail their md5 check.

    Attributes:
        images (np.ndarray): float32, ``(N, C, H, W)``, values in [0, 1].
        labels (np.ndarray): int64, ``(N,)``, values in ``0 .. len(classes) - 1``.
        classes (list of str): class names.
        split (str): ``"train"`` or ``"test"``.

    Raises:
        FileNotFoundError: a file is missing and ``download`` is False.
        ChecksumError: a file has the wrong md5 and ``download`` is False, or no source had a good copy.
        DownloadError: a file is missing and no source could deliver it; the message ends with
            what to do (set ``MINIDL_DATA_MIRROR`` or put the file in ``<root>/<folder>/``).
        DatasetFormatError: a verified file does not parse as expected.
        TypeError: ``root`` is not a str or ``os.PathLike``.
        NotADirectoryError: ``root`` exists and is not a folder.
        ValueError: ``train`` or ``download`` is not a bool.
    """

    folder = None
    mirrors = ()
    files = {}
    classes = []

    def __init__(self, root="data", train=True, download=True):
        name = type(self).__name__
        train = check_bool(name, "train", train)
        download = check_bool(name, "download", download)
        self.root = check_root(name, root)
        self.split = "train" if train else "test"
        self.train = train
        self.classes = list(self.classes)  # a per-instance copy, safe to edit
        self.images, self.labels = self._prepare(download)

    @property
    def path(self):
        """The folder holding this dataset's files: ``<root>/<folder>``."""
        return os.path.join(self.root, self.folder)

    def arrays(self):
        """Return ``(images, labels)``."""
        return self.images, self.labels

    def _prepare(self, download):
        """Find (and fetch, if allowed) the split's files; return ``(images, labels)``."""
        paths = {role: self._ensure(spec, download) for role, spec in self.files[self.split].items()}
        return self._load(paths)

    def _load(self, paths):
        raise NotImplementedError

    def _ensure(self, spec, download):
        """Return the path of ``spec`` under ``self.path``, verified, fetching it if allowed."""
        name = type(self).__name__
        path = os.path.join(self.path, spec.name)
        hint = fix_hint(self.folder, spec.name, self.path)
        if os.path.isfile(path):
            received = md5sum(path)
            if received == spec.md5:
                return path
            if not download:
                raise ChecksumError(f"{name}: {path} has md5 {received}, expected {spec.md5}; delete it "
                                    f"or pass download=True to fetch a good copy")
        elif not download:
            raise FileNotFoundError(f"{name}: {path} not found and download=False. Pass download=True to "
                                    f"fetch it. {hint}")
        sources = file_sources(self.folder, spec.name, self.mirrors)
        try:
            return download_file(spec.name, spec.md5, sources, self.path, hint=hint)
        except (ChecksumError, DownloadError) as exc:
            raise type(exc)(f"{name}: {exc}") from None

    def __repr__(self):
        return f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, samples={len(self)})"


class IDXImageDataset(FileDataset):
    """Base for datasets stored as an IDX image file and an IDX label file (MNIST-like).

    Subclasses declare ``folder``, ``mirrors``, ``files`` (roles ``"images"`` and ``"labels"``),
    ``classes`` and ``image_shape`` (``(H, W)``). Images (unsigned bytes ``(N, H, W)``) become
    float32 ``(N, 1, H, W)`` in [0, 1] (divided by 255); labels (unsigned bytes ``(N,)``)
    become int64.
    """

    image_shape = (28, 28)

    def _load(self, paths):
        images = read_idx(paths["images"])
        labels = read_idx(paths["labels"])
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != tuple(self.image_shape):
            raise DatasetFormatError(
                f"{type(self).__name__}: {paths['images']}: expected uint8 images of shape "
                f"(N, {', '.join(map(str, self.image_shape))}), got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DatasetFormatError(f"{type(self).__name__}: {paths['labels']}: expected uint8 labels "
                                     f"of shape (N,), got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DatasetFormatError(f"{type(self).__name__}: {len(images)} images in {paths['images']} but "
                                     f"{len(labels)} labels in {paths['labels']}")
        if labels.size and labels.max() >= len(self.classes):
            raise DatasetFormatError(f"{type(self).__name__}: {paths['labels']}: label {labels.max()} out of "
                                     f"range for {len(self.classes)} classes")
        x = np.divide(images, 255, dtype=np.float32).reshape(len(images), 1, *self.image_shape)
        return x, labels.astype(np.int64)


class MNIST(IDXImageDataset):
    """The MNIST handwritten digits (LeCun et al. 1998), read from the original IDX gz files.

    60,000 training and 10,000 test images of 28x28 grey pixels, labels 0..9. The four files
    (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
    ``t10k-labels-idx1-ubyte.gz``) live in ``<root>/mnist/`` and are checked against their
    official md5s; missing or wrong ones are fetched (when ``download``) from
    ``$MINIDL_DATA_MIRROR/mnist/``, then from the mirrors torchvision uses. The IDX format is
    described on the MNIST page (http://yann.lecun.com/exdb/mnist/), see :func:`read_idx`.

    Reference: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
    document recognition", Proc. IEEE 86(11), 1998.

    Args:
        root (str or PathLike): data folder; files go to ``<root>/mnist/``. Default ``"data"``.
        train (bool): the 60,000-image training set if True, else the 10,000-image test set.
        download (bool): fetch missing or corrupted files. Default True.

    Attributes:
        images (np.ndarray): float32, shape ``(N, 1, 28, 28)``, pixel intensities in [0, 1]
            (0 = background, 1 = full ink).
        labels (np.ndarray): int64, shape ``(N,)``, the digit 0..9.
        classes (list of str): ``["0", ..., "9"]``.

    Indexing: ``ds[i]`` is ``(image (1, 28, 28), label)``; slices and index arrays give
    ``(images (k, 1, 28, 28), labels (k,))``.

    Raises:
        FileNotFoundError: a file is missing and ``download=False``.
        ChecksumError: a file's md5 is wrong (``download=False``), or no source had a good copy;
            the message names the file, both md5s and the sources tried.
        DownloadError: a file is missing everywhere / no source was reachable.
        DatasetFormatError: a file does not parse as IDX with the expected shape.

    Example:
        >>> test = MNIST("data", train=False)
        >>> test.images.shape, test.labels[:3]
        ((10000, 1, 28, 28), array([7, 2, 1]))
    """

    folder = "mnist"
    mirrors = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    files = {
        "train": {
            "images": RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "labels": RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        },
        "test": {
            "images": RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            "labels": RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
    }
    classes = [str(d) for d in range(10)]


class FashionMNIST(IDXImageDataset):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): Zalando article images in MNIST's IDX format.

    60,000 training and 10,000 test images of 28x28 grey pixels in 10 balanced classes (1,000 per
    class in the test set). Same file names and format as :class:`MNIST`, in
    ``<root>/fashion-mnist/``, checked against the official md5s and fetched (when ``download``)
    from ``$MINIDL_DATA_MIRROR/fashion-mnist/``, then from the dataset's S3 mirror.

    Reference: H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.

    Args:
        root (str or PathLike): data folder; files go to ``<root>/fashion-mnist/``. Default ``"data"``.
        train (bool): the training set if True, else the test set.
        download (bool): fetch missing or corrupted files. Default True.

    Attributes:
        images (np.ndarray): float32, shape ``(N, 1, 28, 28)``, values in [0, 1].
        labels (np.ndarray): int64, shape ``(N,)``, values 0..9.
        classes (list of str): ``["T-shirt/top", "Trouser", ..., "Ankle boot"]``.

    Raises:
        FileNotFoundError, ChecksumError, DownloadError, DatasetFormatError: as for :class:`MNIST`.
    """

    folder = "fashion-mnist"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    files = {
        "train": {
            "images": RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "labels": RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        },
        "test": {
            "images": RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            "labels": RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
    }
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
