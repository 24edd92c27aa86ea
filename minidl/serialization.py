"""Saving and loading nested containers of NumPy arrays without pickle, written atomically.

:func:`save` writes a model's ``state_dict``, an optimizer's ``state_dict`` or a whole training
checkpoint -- any tree of dicts, lists and tuples whose leaves are NumPy arrays, NumPy scalars,
Python numbers, bools, strings and None -- and :func:`load` reads it back. Loading never runs
code from the file (no pickle), so a file from an untrusted source cannot execute anything.

File format (version 1)
-----------------------
A ZIP archive (stored, not compressed), like NumPy's ``.npz``:

* ``header.json`` (first member): a UTF-8 JSON object
  ``{"format": "minidl", "version": 1, "arrays": n, "tree": node}``.
* ``arrays/0.npy`` ... ``arrays/<n-1>.npy``: the arrays in NumPy's ``.npy`` format, written and
  read with ``allow_pickle=False`` (so object arrays are refused); dtype, shape (also 0-d),
  byte order and memory order are kept, values bit for bit.

A ``node`` of the tree is one of:

=============================  ==================================================
JSON                           Python value
=============================  ==================================================
``null`` / ``true`` / ``false``   ``None`` / ``True`` / ``False``
a string                       ``str``
an integer                     ``int`` (any size)
``{"float": "0.1"}``           ``float``, from ``repr`` (exact; also ``"nan"``, ``"inf"``, ``"-0.0"``)
``{"array": i}``               ``np.ndarray`` stored in ``arrays/<i>.npy``
``{"scalar": i}``              NumPy scalar (e.g. ``np.float32``), a 0-d array in ``arrays/<i>.npy``
``{"list": [node, ...]}``      ``list``
``{"tuple": [node, ...]}``     ``tuple``
``{"dict": [[key, value], ...]}``          ``dict`` (keys are nodes too, e.g. int keys)
``{"ordered_dict": [[key, value], ...]}``  ``collections.OrderedDict``
=============================  ==================================================

Order is kept for every container. Each ZIP member carries a CRC-32 that is checked on load, so
a truncated or corrupted file is detected. An array that appears twice in the tree is stored
twice and loads as two independent arrays.
"""
import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load", "SerializationError", "atomic_write", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FORMAT_NAME = "minidl"
_HEADER = "header.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so saving the same object twice gives the same bytes


class SerializationError(ValueError):
    """A file could not be read by :func:`minidl.load`: truncated, corrupted, not written by
    :func:`minidl.save`, or written by a newer format version.

    Attributes:
        path (str): the file.
    """

    def __init__(self, path, reason):
        self.path = os.fspath(path)
        super().__init__(f"minidl.load: {self.path!r} is not a readable minidl file: {reason}")


# --------------------------------------------------------------------------- atomic writes
def _fsync_directory(folder):
    """Make a rename inside ``folder`` durable (POSIX only; Windows has no directory handles)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file_mode(path):
    """The permission bits a plain ``open(path, "w")`` would give (or the existing file's)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, newline=None):
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    The data is written to a temporary file in the same folder (``.<name>.<random>.tmp``),
    flushed and ``fsync``-ed, renamed over ``path`` with :func:`os.replace`, and the folder is
    ``fsync``-ed. If the block raises, the temporary file is removed and ``path`` is untouched.
    A process killed meanwhile leaves ``path`` as it was (and possibly the temporary file).

    Args:
        path (str or os.PathLike): the final file name, used exactly as given.
        mode (str): ``"wb"`` (default) or ``"w"`` (text).
        encoding, newline: passed to :func:`open` in text mode.
    Yields:
        the open file object.
    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: ``mode`` is not ``"wb"`` or ``"w"``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder")
    file_mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            if hasattr(os, "fchmod"):  # mkstemp creates the file readable by its owner only
                os.fchmod(f.fileno(), file_mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(folder)


# --------------------------------------------------------------------------- encoding
def _where(location):
    return "obj" + "".join(location)


def _encode(value, location, arrays, active):
    """Turn ``value`` into a JSON node, appending arrays to ``arrays``."""
    if isinstance(value, (np.ndarray, np.generic)):  # first: np.float64 is also a float
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"minidl.save: {_where(location)} is an array of dtype {array.dtype}; "
                            "object arrays cannot be saved without pickle")
        arrays.append(array)
        return {"array" if isinstance(value, np.ndarray) else "scalar": len(arrays) - 1}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return {"float": repr(float(value))}
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            raise ValueError(f"minidl.save: {_where(location)} contains itself")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                kind = "ordered_dict" if isinstance(value, OrderedDict) else "dict"
                items = []
                for key, item in value.items():
                    where = location + [f"[{key!r}]"]
                    if isinstance(key, (dict, list, np.ndarray)):
                        raise TypeError(f"minidl.save: {_where(location)} has a key of type "
                                        f"{type(key).__name__}")
                    items.append([_encode(key, where, arrays, active),
                                  _encode(item, where, arrays, active)])
                return {kind: items}
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [_encode(item, location + [f"[{i}]"], arrays, active)
                           for i, item in enumerate(value)]}
        finally:
            active.discard(id(value))
    raise TypeError(
        f"minidl.save: {_where(location)} is a {type(value).__name__}; expected NumPy arrays, "
        "numbers, bools, strings, None and dicts/lists/tuples of them"
    )


def save(obj, path):
    """Save a tree of arrays, numbers and strings to ``path``, atomically, without pickle.

    ``obj`` may be a model's ``state_dict()``, an optimizer's ``state_dict()`` or any nesting of
    dicts (any key that is itself a supported leaf or tuple, e.g. str or int), lists and tuples
    whose leaves are NumPy arrays, NumPy scalars, Python ints/floats/bools/strings and None.
    The file is written at exactly ``path`` (no extension is added) in the format described in
    :mod:`minidl.serialization`, through :func:`atomic_write`: an existing file is replaced only
    once the new one is complete and on disk, so a crash never leaves a half-written ``path``.

    Args:
        obj: the tree to save.
        path (str or os.PathLike): the file to write.
    Raises:
        TypeError: ``path`` is not a path, or ``obj`` holds an unsupported value (the error names
            where, e.g. ``obj['optimizer']['state'][0]``), such as an object array.
        ValueError: ``obj`` contains itself.
        OSError: the file cannot be written (e.g. its folder does not exist).

    Example:
        >>> minidl.save({"model": model.state_dict(), "epoch": 3}, "run/model.ckpt")
        >>> model.load_state_dict(minidl.load("run/model.ckpt")["model"])
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"minidl.save: expected a path (str or os.PathLike), got {type(path).__name__}")
    arrays = []
    tree = _encode(obj, [], arrays, set())
    header = {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "arrays": len(arrays), "tree": tree}
    header_bytes = json.dumps(header, ensure_ascii=True, allow_nan=False).encode("ascii")
    with atomic_write(path) as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr(zipfile.ZipInfo(_HEADER, _ZIP_DATE), header_bytes)
            for index, array in enumerate(arrays):
                info = zipfile.ZipInfo(f"arrays/{index}.npy", _ZIP_DATE)
                with archive.open(info, "w", force_zip64=array.nbytes > 2**30) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


# --------------------------------------------------------------------------- decoding
class _Malformed(Exception):
    """Raised inside :func:`load` for a structurally invalid header."""


def _decode(node, arrays):
    if node is None or isinstance(node, (bool, str)):
        return node
    if isinstance(node, int):
        return node
    if not isinstance(node, dict) or len(node) != 1:
        raise _Malformed(f"unexpected node {str(node)[:80]}")
    (kind, body), = node.items()
    if kind == "float":
        if not isinstance(body, str):
            raise _Malformed("a float that is not written as a string")
        return float(body)
    if kind in ("array", "scalar"):
        if not isinstance(body, int) or isinstance(body, bool) or not 0 <= body < len(arrays):
            raise _Malformed(f"array index {body!r} out of range")
        array = arrays[body]
        if kind == "scalar":
            if array.ndim != 0:
                raise _Malformed(f"scalar {body} is stored with shape {array.shape}")
            return array[()]
        return array
    if kind in ("list", "tuple"):
        if not isinstance(body, list):
            raise _Malformed(f"a {kind} that is not a JSON array")
        items = [_decode(item, arrays) for item in body]
        return items if kind == "list" else tuple(items)
    if kind in ("dict", "ordered_dict"):
        if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
            raise _Malformed(f"a {kind} that is not a list of [key, value] pairs")
        result = OrderedDict() if kind == "ordered_dict" else {}
        for key, value in body:
            result[_decode(key, arrays)] = _decode(value, arrays)
        return result
    raise _Malformed(f"unknown node type {kind!r}")


def _read_array(archive, index):
    name = f"arrays/{index}.npy"
    data = archive.read(name)  # checks the member's CRC-32
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # save() writes 1.0, or 2.0 for very large headers
        raise _Malformed(f"{name} has .npy format version {version}")
    expected = stream.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(data):  # checked before read_array allocates the array
        raise _Malformed(f"{name} holds {len(data)} bytes, its header implies {expected}")
    stream.seek(0)
    array = np.lib.format.read_array(stream, allow_pickle=False)
    return array if array.flags.writeable else array.copy()  # small arrays come back read-only


def load(path):
    """Load what :func:`save` wrote; never unpickles and never returns a partial result.

    Args:
        path (str or os.PathLike): the file.
    Returns:
        the saved tree: dicts (OrderedDicts where saved so), lists, tuples, NumPy arrays (fresh,
        writable, same dtype and shape), NumPy scalars, Python numbers, bools, strings, None.
    Raises:
        FileNotFoundError: ``path`` does not exist (other OSErrors as raised by ``open``).
        SerializationError: (a ``ValueError``, naming the file) the file is truncated, corrupted
            (a CRC-32 mismatch), not written by :func:`minidl.save` (e.g. a pickle, a plain
            ``.npz``), or written by a newer format version.
        TypeError: ``path`` is not a path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"minidl.load: expected a path (str or os.PathLike), got {type(path).__name__}")
    with open(path, "rb") as f:
        try:
            return _load_archive(f)
        except _Malformed as error:
            raise SerializationError(path, str(error)) from None
        except zipfile.BadZipFile as error:
            raise SerializationError(path, f"not a complete ZIP archive ({error})") from None
        except (ValueError, KeyError, TypeError, EOFError, OSError, RecursionError, OverflowError,
                NotImplementedError, MemoryError) as error:
            # zlib/struct/npy header errors from a damaged member, a missing array member, an
            # unhashable dict key in a forged header, ...
            raise SerializationError(path, f"damaged content ({type(error).__name__}: {error})") from None


def _load_archive(f):
    """Read and check the header, then every array, then build the tree."""
    with zipfile.ZipFile(f) as archive:
        try:
            header = json.loads(archive.read(_HEADER).decode("utf-8"))
        except KeyError:
            raise _Malformed(f"no {_HEADER}: not a file written by minidl.save") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT_NAME:
            raise _Malformed(f"{_HEADER} does not describe a minidl file")
        version = header.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _Malformed(f"invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise _Malformed(f"written in format version {version} by a newer minidl; "
                             f"this version reads up to {FORMAT_VERSION}")
        count = header.get("arrays")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise _Malformed(f"invalid array count {count!r}")
        arrays = [_read_array(archive, i) for i in range(count)]
        return _decode(header.get("tree"), arrays)
