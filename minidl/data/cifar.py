"""CIFAR-10, python version: a pickle reader that runs no code, structure checks, and the dataset.

The "CIFAR-10 python version" (Krizhevsky 2009) is a folder ``cifar-10-batches-py/`` of Python 2
pickles: ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch``, each a dict with
``b"data"``, a uint8 array ``(10000, 3072)`` whose rows hold one 32x32 image as three planes
R, G, B of 1024 row-major pixels each, and ``b"labels"``, 10,000 ints in 0..9; and
``batches.meta``, a dict whose ``b"label_names"`` are the 10 class names.

A dataset folder is input from outside, and ``pickle.load`` would run any code a file names. So
the files are read by :class:`RestrictedUnpickler`, which resolves only the NumPy names an
array pickle uses (``_reconstruct``, ``ndarray``, ``dtype``; ``_frombuffer`` at protocol 5) plus
``_codecs.encode`` (how Python 3 writes bytes at protocol 2), each to a stand-in that checks its
arguments and builds nothing but a uint8 array or bytes. Dicts, lists, tuples, bytes, str, ints and floats come from
the pickle opcodes themselves and execute nothing. Every other global is refused.
"""
import http.client
import io
import os
import pickle

import numpy as np

from .datasets import DatasetFormatError, FileDataset, RemoteFile, check_path
from .download import (DownloadError, UnsafeArchiveError, extract_tar, fetch_into, fetch_verified, fix_hint,
                       is_url, join, make_dirs, md5sum, mirror_base, move_folder_into_place, remove_empty_dirs,
                       temp_folder)

IMAGES_PER_FILE = 10000
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
REQUIRED_FILES = TRAIN_FILES + TEST_FILES + (META_FILE,)


# --------------------------------------------------------------------------------------------
# A pickle reader that builds only plain data and uint8 arrays
# --------------------------------------------------------------------------------------------


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asks for something a data file never needs (a function, a class, an object)."""


class _Marker:
    """Stands for ``numpy.ndarray`` in ``_reconstruct``'s arguments; not callable, builds nothing."""

    def __repr__(self):
        return "<numpy.ndarray marker>"


_NDARRAY = _Marker()


class _DtypeSpec:
    """What ``numpy.dtype('u1', ...)`` plus its ``__setstate__`` describe; only uint8 is accepted."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("|", b"|", "<", b"<", ">", b">",
                                                                             "=", b"=")):
            raise RefusedPickleError(f"unexpected dtype state {state!r:.80}")


class _ArraySpec:
    """What ``_reconstruct(ndarray, (0,), b'b')`` plus ``__setstate__`` describe, built as a uint8 array."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise RefusedPickleError(f"unexpected ndarray state of type {type(state).__name__}")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeSpec):
            raise RefusedPickleError("an ndarray whose dtype is not uint8")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise RefusedPickleError(f"an ndarray with shape {shape!r:.80}")
        if not isinstance(raw, (bytes, bytearray)):
            raise RefusedPickleError(f"an ndarray whose data is a {type(raw).__name__}, not bytes")
        size = int(np.prod(shape, dtype=object))
        if len(raw) != size:
            raise RefusedPickleError(f"an ndarray of shape {shape} (needs {size} bytes) holding {len(raw)} bytes")
        # A read-only view of the bytes: no copy (the dataset converts to float32 anyway).
        self.array = np.frombuffer(raw, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY or tuple(shape) != (0,) or typecode not in (b"b", "b"):
        raise RefusedPickleError(f"numpy _reconstruct with unexpected arguments {(subtype, shape, typecode)!r:.80}")
    return _ArraySpec()


def _frombuffer(buffer, dtype, shape, order):
    """NumPy's protocol-5 array reconstruction, for uint8 only; a read-only view of the bytes."""
    if order not in ("C", "F"):
        raise RefusedPickleError(f"an ndarray with order {order!r:.20}")
    spec = _ArraySpec()
    spec.__setstate__((1, shape, dtype, order == "F", bytes(buffer) if isinstance(buffer, bytearray) else buffer))
    return spec.array


def _dtype(code, align=False, copy=True):
    if code not in ("u1", b"u1"):
        raise RefusedPickleError(f"dtype {code!r}: only uint8 arrays are read")
    return _DtypeSpec()


def _encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedPickleError(f"_codecs.encode with unexpected arguments {(text, encoding)!r:.80}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` for data files: plain data and uint8 NumPy arrays, no code.

    ``find_class`` hands out checked stand-ins for the few names a NumPy uint8 array pickle
    uses (see the module docstring) and raises :class:`RefusedPickleError` for every other
    global -- ``os.system``, ``builtins.eval``, any class -- so a malicious file fails before
    anything of it runs. Strings are read with ``encoding="bytes"`` (Python 2 ``str`` -> bytes).
    Arrays come back as ``_ArraySpec`` objects; :func:`load_pickle` replaces those at the top
    level of a dict by their arrays.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _encode,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickleError(f"it names {module}.{name}") from None

    def persistent_load(self, pid):
        raise RefusedPickleError("it uses a persistent id")


def load_pickle(path):
    """Read one CIFAR-style pickle with :class:`RestrictedUnpickler`; never runs code from the file.

    Args:
        path (str or PathLike): the file.
    Returns:
        The unpickled object; when it is a dict, its array values are NumPy uint8 arrays
        (read-only views of the file's bytes).
    Raises:
        DatasetFormatError: the pickle is refused (it names a function or class other than the
            NumPy array reconstruction, or a non-uint8 array) or broken (truncated, bad opcodes);
            the message names the file.
        TypeError: ``path`` is not a str or ``os.PathLike``.
    """
    path = check_path("load_pickle", path)
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(io.BufferedReader(f, 1 << 20), encoding="bytes").load()
    except RefusedPickleError as exc:
        raise DatasetFormatError(f"{path}: refused to unpickle: {exc}. A CIFAR-10 file holds only dicts, "
                                 f"lists, bytes, ints and uint8 arrays; anything else is refused, since "
                                 f"unpickling it could run code from the file") from None
    except OSError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "not a valid file"
        raise DatasetFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, _ArraySpec):
                if value.array is None:
                    raise DatasetFormatError(f"{path}: the array under {key!r} has no data")
                obj[key] = value.array
    return obj


# --------------------------------------------------------------------------------------------
# Structure checks
# --------------------------------------------------------------------------------------------


def _entry(path, obj, key):
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict, got {type(obj).__name__}")
    for k in (key.encode(), key):  # Python 2 pickles give bytes keys, Python 3 ones str keys
        if k in obj:
            return obj[k]
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise DatasetFormatError(f"{path}: no b{key!r} entry (keys: {keys})")


def read_cifar_file(path):
    """Read and check one CIFAR-10 data file (``data_batch_*`` or ``test_batch``).

    Args:
        path (str or PathLike): the file.
    Returns:
        tuple: ``(data, labels)``: uint8 ``(10000, 3072)`` (read-only) and int64 ``(10000,)``.
    Raises:
        DatasetFormatError: the file is refused or broken (:func:`load_pickle`), not a dict, or
            its ``b"data"`` is not uint8 ``(10000, 3072)`` or its ``b"labels"`` are not 10,000
            ints in 0..9; the message names the file and what is wrong.
    """
    path = os.fspath(path)
    obj = load_pickle(path)
    data = _entry(path, obj, "data")
    expected = (IMAGES_PER_FILE, int(np.prod(IMAGE_SHAPE)))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != expected:
        got = f"uint8 {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: b'data' must be uint8 of shape {expected}, got {got}")
    labels = _entry(path, obj, "labels")
    if not isinstance(labels, list) or len(labels) != IMAGES_PER_FILE:
        got = f"{len(labels)} entries" if isinstance(labels, list) else type(labels).__name__
        raise DatasetFormatError(f"{path}: b'labels' must be a list of {IMAGES_PER_FILE} ints, got {got}")
    if not all(type(v) is int for v in labels):
        bad = next(v for v in labels if type(v) is not int)
        raise DatasetFormatError(f"{path}: b'labels' must hold ints, found {type(bad).__name__} {bad!r:.40}")
    labels = np.array(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)][0]
        raise DatasetFormatError(f"{path}: b'labels' must lie in 0..{NUM_CLASSES - 1}, found {bad}")
    return data, labels


def read_cifar_meta(path):
    """Read and check ``batches.meta``; return the 10 class names as a list of str.

    Raises:
        DatasetFormatError: refused or broken file, or ``b"label_names"`` is not a list of 10
            ASCII names (bytes or str).
    """
    path = os.fspath(path)
    names = _entry(path, load_pickle(path), "label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        got = f"{len(names)} entries" if isinstance(names, list) else type(names).__name__
        raise DatasetFormatError(f"{path}: b'label_names' must be a list of {NUM_CLASSES} names, got {got}")
    out = []
    for name in names:
        if isinstance(name, bytes):
            try:
                name = name.decode("ascii")
            except UnicodeDecodeError:
                raise DatasetFormatError(f"{path}: class name {name!r} is not ASCII") from None
        if not isinstance(name, str) or not name:
            raise DatasetFormatError(f"{path}: class names must be non-empty strings, found {name!r:.40}")
        out.append(name)
    return out


def check_cifar_folder(folder, files=REQUIRED_FILES):
    """Check an extracted ``cifar-10-batches-py`` folder by its structure.

    All of ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` must be present; each of
    ``files`` is also read and checked (:func:`read_cifar_file`, :func:`read_cifar_meta`).

    Raises:
        DatasetFormatError: a file is missing, refused or malformed; the message names it.
    """
    folder = os.fspath(folder)
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DatasetFormatError(f"{folder}: incomplete CIFAR-10 folder, missing {', '.join(missing)}")
    for name in files:
        path = os.path.join(folder, name)
        read_cifar_meta(path) if name == META_FILE else read_cifar_file(path)


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class CIFAR10(FileDataset):
    """CIFAR-10 (Krizhevsky 2009): 32x32 colour images in 10 classes, from the python-version pickles.

    50,000 training images (5,000 per class) and 10,000 test images (1,000 per class). The files
    are read from ``<root>/cifar10/cifar-10-batches-py/`` when that folder exists. Otherwise (with
    ``download``) minidl gets them, in this order, from:

    1. ``<root>/cifar10/cifar-10-python.tar.gz``, when present with the official md5;
    2. ``$MINIDL_DATA_MIRROR/cifar10/cifar-10-python.tar.gz`` (md5-checked);
    3. ``$MINIDL_DATA_MIRROR/cifar10/cifar-10-batches-py/`` (an extracted folder, checked by
       structure, since rebuilt pickles cannot match the official md5s), copied into root;
    4. the official tarball from the mirror torchvision uses, ``https://www.cs.toronto.edu/~kriz/``.

    A tarball is checked against md5 ``c58f30108f718f92721af3b95e74349a``, kept in
    ``<root>/cifar10/`` and extracted safely (plain files and folders inside
    ``cifar-10-batches-py/`` only) into a temporary folder renamed into place when complete; a
    copied folder is checked the same way before it gets its final name. So
    ``cifar-10-batches-py/`` never holds a partial or unchecked copy.

    An existing folder is checked by structure: all seven files present; the read ones must be
    dicts with ``b"data"`` uint8 ``(10000, 3072)`` and ``b"labels"`` 10,000 ints in 0..9, and
    ``batches.meta`` must name 10 classes. The pickles are read by a restricted unpickler that
    never runs code from the file (see :class:`RestrictedUnpickler`).

    Reference: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech.
    report, University of Toronto, 2009 (chapter 3); https://www.cs.toronto.edu/~kriz/cifar.html.

    Args:
        root (str or PathLike): data folder; files go to ``<root>/cifar10/``. Default ``"data"``.
        train (bool): the 50,000-image training set if True, else the 10,000-image test set.
        download (bool): fetch the files when the folder is missing. Default True.

    Attributes:
        images (np.ndarray): float32, shape ``(N, 3, 32, 32)`` (RGB planes), values in [0, 1]
            (bytes / 255, as torchvision's ``ToTensor``). 614 MB for the training set; the
            loader keeps no other copy.
        labels (np.ndarray): int64, shape ``(N,)``, values 0..9.
        classes (list of str): ``["airplane", "automobile", "bird", "cat", "deer", "dog",
            "frog", "horse", "ship", "truck"]``, read from ``batches.meta``.

    Indexing: ``ds[i]`` is ``(image (3, 32, 32), label)``; slices and index arrays give batches.

    Raises:
        FileNotFoundError: the folder is missing and ``download=False``.
        DownloadError: no source delivered the files; the message lists every source tried and
            ends with what to do. No empty folder is left behind.
        DatasetFormatError: a file in the folder is missing, refused or malformed (the message
            names the file and the problem; delete the folder to download it again).
        UnsafeArchiveError: a tarball member would land outside ``cifar-10-batches-py/``.
        TypeError, NotADirectoryError, ValueError: bad ``root``, ``train`` or ``download``.

    Example:
        >>> test = CIFAR10("data", train=False)
        >>> test.images.shape, test.classes[test.labels[0]]
        ((10000, 3, 32, 32), 'cat')
    """

    folder = "cifar10"
    extracted = "cifar-10-batches-py"
    archive = RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
    mirrors = ("https://www.cs.toronto.edu/~kriz/",)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def _prepare(self, download):
        folder = os.path.join(self.path, self.extracted)
        if not os.path.isdir(folder):
            self._fetch(folder, download)
        files = TRAIN_FILES if self.train else TEST_FILES
        try:
            check_cifar_folder(folder, files=())  # all present; the read ones are checked below
            self.classes = read_cifar_meta(os.path.join(folder, META_FILE))
            return self._read(folder, files)
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"CIFAR10: {exc}. Delete {folder} to download a fresh copy") from None

    @staticmethod
    def _read(folder, files):
        images = np.empty((IMAGES_PER_FILE * len(files),) + IMAGE_SHAPE, dtype=np.float32)
        labels = np.empty(IMAGES_PER_FILE * len(files), dtype=np.int64)
        for i, name in enumerate(files):
            data, file_labels = read_cifar_file(os.path.join(folder, name))
            part = slice(i * IMAGES_PER_FILE, (i + 1) * IMAGES_PER_FILE)
            np.divide(data.reshape((-1,) + IMAGE_SHAPE), 255, out=images[part], dtype=np.float32)
            labels[part] = file_labels
        return images, labels

    def _hint(self):
        return fix_hint(self.folder, f"{self.archive.name} (or the extracted {self.extracted}/)", self.path)

    def _fetch(self, folder, download):
        """Put a checked ``cifar-10-batches-py`` at ``folder``: from a verified tarball in root
        (even with ``download=False``), else from the first source that has one."""
        archive = os.path.join(self.path, self.archive.name)
        have_archive = os.path.isfile(archive) and md5sum(archive) == self.archive.md5
        if not (have_archive or download):
            raise FileNotFoundError(f"CIFAR10: {folder} not found and download=False. Pass download=True "
                                    f"to fetch it. {self._hint()}")
        created = make_dirs(self.path)
        try:
            attempts = self._extract(archive) if have_archive else self._try_sources(folder)
        except (DatasetFormatError, UnsafeArchiveError) as exc:
            remove_empty_dirs(created)
            raise type(exc)(f"CIFAR10: {exc}") from None
        except BaseException:
            remove_empty_dirs(created)
            raise
        if attempts:
            remove_empty_dirs(created)
            tried = "\n".join("  " + a for a in attempts)
            raise DownloadError(f"CIFAR10: could not get {self.extracted}/ from any source. Sources tried:\n"
                                f"{tried}\n{self._hint()}")

    def _try_sources(self, folder):
        """Try each source in order; return [] once ``folder`` is in place, else the failures."""
        attempts = []
        name, md5 = self.archive
        archive = os.path.join(self.path, name)
        if os.path.isfile(archive):  # not the official md5 (else _fetch extracted it): replaced if a source has it
            attempts.append(f"{archive}: md5 {md5sum(archive)}, expected {md5}")
        steps = []
        mirror = mirror_base()
        if mirror:
            mirror = join(mirror, self.folder)
            steps += [("archive", [join(mirror, name)]), ("folder", join(mirror, self.extracted))]
        steps.append(("archive", [join(m, name) for m in self.mirrors]))
        for kind, where in steps:
            if kind == "folder":
                if self._copy_folder(where, folder, attempts):
                    return []
            elif where:
                path, failed, _ = fetch_verified(name, md5, where, self.path)
                attempts.extend(failed)
                if path is not None:
                    return self._extract(path)
        return attempts or [f"{self.extracted}: no source to fetch it from"]

    def _extract(self, archive):
        """Extract the verified ``archive`` into place (checked before renaming); return [] (no failures)."""
        extract_tar(archive, self.path, self.extracted, check=check_cifar_folder)
        return []

    def _copy_folder(self, base, folder, attempts):
        """Copy the extracted folder at ``base`` (a path or URL) to ``folder`` after checking it."""
        if not is_url(base) and not os.path.isdir(base):
            attempts.append(f"{base}{os.sep}: no such folder")
            return False
        with temp_folder(self.path, self.extracted) as tmp:
            copy = os.path.join(tmp, self.extracted)
            os.mkdir(copy)
            for name in REQUIRED_FILES:
                source = join(base, name)
                try:
                    fetch_into(source, os.path.join(copy, name))
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    attempts.append(f"{source}: {exc}")
                    return False
            try:
                check_cifar_folder(copy)
            except DatasetFormatError as exc:
                attempts.append(f"{base}: {exc}".replace(copy, "the copy"))
                return False
            move_folder_into_place(copy, folder)
        return True
