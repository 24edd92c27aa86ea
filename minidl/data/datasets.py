"""Datasets: in-memory arrays, and datasets read from their original files (MNIST, Fashion-MNIST).

Every dataset follows one small protocol, which is all :class:`~minidl.data.DataLoader` needs:
``arrays()`` returns a tuple of NumPy arrays of equal length along axis 0 (for the image datasets
``(images, labels)``); ``len(ds)`` is that length and ``ds[i]`` is ``tuple(a[i] for a in arrays())``.

File datasets (:class:`FileDataset`) declare their original files with their md5s, a folder name
and public mirrors; the base class finds each file under ``<root>/<folder>/``, verifies its md5 and
fetches it when it is missing or wrong. A subclass only declares its files and implements ``_load``.

Where files come from, in order:

1. ``$MINIDL_DATA_MIRROR/<folder>/<original name>``, when the environment variable is set to a
   local folder or a URL base (``http://``, ``https://``, ``ftp://``, ``file://``);
2. the dataset's public mirrors (the ones torchvision uses), ``<mirror><original name>``.

A file is written to a temporary ``.part`` file next to its destination and moved into place with
``os.replace`` only after its md5 matched, so a final name never holds a partial or wrong file.
"""
import gzip
import hashlib
import http.client
import os
import secrets
import urllib.parse
import urllib.request
import zlib
from typing import NamedTuple

import numpy as np

MIRROR_ENV = "MINIDL_DATA_MIRROR"
"""Name of the environment variable holding a local folder or URL base tried before the public mirrors."""

DOWNLOAD_TIMEOUT = 30.0
"""Seconds a network connection may stall (connect or read) before the next source is tried."""

_CHUNK = 1 << 20
_URL_SCHEMES = ("http", "https", "ftp", "file")


class ChecksumError(ValueError):
    """A file's md5 does not match the published one."""


class DatasetFormatError(ValueError):
    """A dataset file is readable but not in the expected format (bad magic, sizes, shapes)."""


class DownloadError(OSError):
    """No source could provide a file (missing everywhere, network errors)."""


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
        return tuple(a[index] for a in self.arrays())


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
        arrays = tuple(np.asarray(a) for a in arrays)
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
# Checksums, sources and downloads
# --------------------------------------------------------------------------------------------


def md5sum(path):
    """Return the md5 of the file at ``path`` as a lowercase hex string (read in 1 MiB chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_url(location):
    return urllib.parse.urlsplit(location).scheme.lower() in _URL_SCHEMES


def _join(base, name):
    """Join a folder path or a URL base with one more path component."""
    if _is_url(base):
        return base.rstrip("/") + "/" + name
    return os.path.join(os.path.expanduser(base), name)


def file_sources(folder, name, mirrors=()):
    """List the locations to try for one file, in order.

    Args:
        folder (str): the dataset's folder, e.g. ``"mnist"``.
        name (str): the original file name.
        mirrors (sequence of str): URL bases holding the file directly (``<mirror><name>``).
    Returns:
        list of str: ``$MINIDL_DATA_MIRROR/<folder>/<name>`` first when the variable is set
        (read now, at every call), then each ``<mirror>/<name>``.
    """
    sources = []
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        sources.append(_join(_join(env, folder), name))
    sources.extend(_join(m, name) for m in mirrors)
    return sources


def _copy_stream(src, dst, digest, progress=None):
    for chunk in iter(lambda: src.read(_CHUNK), b""):
        dst.write(chunk)
        digest.update(chunk)
        if progress is not None:
            progress(len(chunk))


def _fetch(source, dst, label):
    """Copy ``source`` (a path or URL) into the open binary file ``dst``; return the md5 hex."""
    digest = hashlib.md5(usedforsecurity=False)
    if not _is_url(source):
        with open(source, "rb") as src:
            _copy_stream(src, dst, digest)
        return digest.hexdigest()
    from tqdm.auto import tqdm

    request = urllib.request.Request(source, headers={"User-Agent": "minidl"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        # disable=None: the bar is shown on a terminal and stays silent in logs and CI.
        with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                  disable=None, leave=False) as bar:
            _copy_stream(response, dst, digest, bar.update)
    return digest.hexdigest()


def _describe(exc):
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"


def download_file(name, md5, sources, dest_dir):
    """Fetch one file into ``dest_dir`` from the first source whose copy has the right md5.

    Each source (a local path or a URL) is copied to a temporary ``.part`` file in ``dest_dir``;
    only a copy whose md5 equals ``md5`` is moved to ``dest_dir/name`` (``os.replace``). Failed
    attempts leave nothing behind.

    Args:
        name (str): the final file name.
        md5 (str): the expected md5, hex.
        sources (sequence of str): full locations of the file, tried in order.
        dest_dir (str or PathLike): the destination folder (created if needed).
    Returns:
        str: the path of the verified file.
    Raises:
        ChecksumError: at least one source delivered the file but none with the right md5; the
            message names the file, the expected and received md5s and every source tried.
        DownloadError: no source could deliver the file (or there were no sources).
    """
    dest_dir = os.fspath(dest_dir)
    final = os.path.join(dest_dir, name)
    if not sources:
        raise DownloadError(f"{name}: no source to fetch it from; set {MIRROR_ENV} to a folder or URL "
                            f"that holds it")
    os.makedirs(dest_dir, exist_ok=True)
    attempts, wrong_md5 = [], False
    for source in sources:
        tmp = os.path.join(dest_dir, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        try:
            # O_EXCL: a fresh name of our own; mode 0o666 so the umask decides, as for any new file.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as out:
                received = _fetch(source, out, name)
            if received == md5:
                os.replace(tmp, final)
                return final
            wrong_md5 = True
            attempts.append(f"{source}: received md5 {received}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            attempts.append(f"{source}: {_describe(exc)}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    tried = "\n".join("  " + a for a in attempts)
    if wrong_md5:
        raise ChecksumError(f"{name}: md5 mismatch, expected {md5}; no source delivered a good copy. "
                            f"Sources tried:\n{tried}")
    raise DownloadError(f"{name}: could not be fetched from any source. Sources tried:\n{tried}")


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
    """
    path = os.fspath(path)
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


def _check_bool(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


class FileDataset(Dataset):
    """Base for image-classification datasets read from their original, checksummed files.

    A subclass declares:

    - ``folder`` (str): the folder under ``root`` and under ``$MINIDL_DATA_MIRROR``;
    - ``mirrors`` (tuple of str): public URL bases holding the files (``<mirror><name>``);
    - ``files`` (dict): ``{"train": {role: RemoteFile}, "test": {role: RemoteFile}}``;
    - ``classes`` (list of str): class names, indexed by label;

    and implements ``_load(paths)``, which receives ``{role: verified path}`` and returns
    ``(images, labels)``. Everything else -- finding, verifying and fetching the files, ``len``,
    indexing and ``arrays()`` -- is shared.

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
        DownloadError: a file is missing and no source could deliver it.
        DatasetFormatError: a verified file does not parse as expected.
        ValueError: ``train`` or ``download`` is not a bool.
    """

    folder = None
    mirrors = ()
    files = {}
    classes = []

    def __init__(self, root="data", train=True, download=True):
        name = type(self).__name__
        train = _check_bool(name, "train", train)
        download = _check_bool(name, "download", download)
        self.root = os.fspath(root)
        self.split = "train" if train else "test"
        self.train = train
        self.classes = list(self.classes)  # a per-instance copy, safe to edit
        paths = {role: self._ensure(spec, download) for role, spec in self.files[self.split].items()}
        self.images, self.labels = self._load(paths)

    @property
    def path(self):
        """The folder holding this dataset's files: ``<root>/<folder>``."""
        return os.path.join(self.root, self.folder)

    def arrays(self):
        """Return ``(images, labels)``."""
        return self.images, self.labels

    def _load(self, paths):
        raise NotImplementedError

    def _ensure(self, spec, download):
        """Return the path of ``spec`` under ``self.path``, verified, fetching it if allowed."""
        name = type(self).__name__
        path = os.path.join(self.path, spec.name)
        if os.path.isfile(path):
            received = md5sum(path)
            if received == spec.md5:
                return path
            if not download:
                raise ChecksumError(f"{name}: {path} has md5 {received}, expected {spec.md5}; delete it "
                                    f"or pass download=True to fetch a good copy")
        elif not download:
            raise FileNotFoundError(
                f"{name}: {path} not found. Pass download=True to fetch it, or set {MIRROR_ENV} to a "
                f"local folder or URL holding {self.folder}/{spec.name}")
        sources = file_sources(self.folder, spec.name, self.mirrors)
        try:
            return download_file(spec.name, spec.md5, sources, self.path)
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
