"""Tests for minidl.data.CIFAR10: the real files, structure checks of broken folders, the
tarball and folder mirrors, unsafe archives and pickles that try to run code."""
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datahelpers import http_mirror, leftovers, md5, offline  # noqa: F401 (fixtures)
from minidl import data
from minidl.data import cifar

FILES = cifar.REQUIRED_FILES
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TOP = "cifar-10-batches-py"


# --------------------------------------------------------------------------------------------
# The real data set, through the shared mirror (its extracted folder)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_root(real_mirror, tmp_path_factory):
    """A root holding the CIFAR-10 folder, copied once through the mirror; the test set loaded."""
    root = tmp_path_factory.mktemp("cifar_root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data.CIFAR10, "mirrors", ())
        mp.setenv(data.MIRROR_ENV, real_mirror)
        test = data.CIFAR10(root, train=False)
    return root, test


def test_real_test_set(cifar_root):
    root, test = cifar_root
    folder = root / "cifar10" / TOP
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # copied, self-contained
    assert not any(p.is_symlink() for p in folder.iterdir()) and leftovers(root / "cifar10") == []
    assert test.images.shape == (10000, 3, 32, 32) and test.images.dtype == np.float32
    assert test.images.flags.c_contiguous and test.images.flags.owndata
    assert test.images.min() == 0.0 and test.images.max() == 1.0
    assert test.labels.shape == (10000,) and test.labels.dtype == np.int64
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert test.classes == CLASSES and test.classes[test.labels[0]] == "cat"
    assert len(test) == 10000 and test.split == "test"
    image, label = test[0]
    assert image.shape == (3, 32, 32) and label == 3
    assert test.arrays()[0] is test.images and test.arrays()[1] is test.labels
    # Rows are R, G, B planes of 32x32 row-major pixels; images = bytes / 255 in float32.
    raw = cifar.load_pickle(folder / "test_batch")[b"data"]
    assert np.array_equal(test.images[:50], raw[:50].reshape(50, 3, 32, 32).astype(np.float32) / np.float32(255))
    assert repr(test) == f"CIFAR10(root={str(root)!r}, split='test', samples=10000)"


def test_real_train_set(cifar_root):
    root = cifar_root[0]
    train = data.CIFAR10(root, train=True, download=False)  # the folder is there: no mirror needed
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int64 and train.labels[0] == 6  # a frog
    assert np.bincount(train.labels, minlength=10).tolist() == [5000] * 10
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    mean, std = data.channel_mean_std(train)  # the constants everybody quotes
    assert np.allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)
    assert np.allclose(std, [0.2470, 0.2435, 0.2616], atol=1e-4)


def test_existing_folder_is_reused_untouched(cifar_root):
    root = cifar_root[0]
    folder = root / "cifar10" / TOP
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert len(data.CIFAR10(root, train=False, download=False)) == 10000
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


# --------------------------------------------------------------------------------------------
# Tiny CIFAR-like folders (4 images per file)
# --------------------------------------------------------------------------------------------

PER_FILE = 4


@pytest.fixture
def tiny(monkeypatch):
    """CIFAR files of PER_FILE images instead of 10,000."""
    monkeypatch.setattr(cifar, "IMAGES_PER_FILE", PER_FILE)


def _dump(path, obj, protocol=2):
    Path(path).write_bytes(pickle.dumps(obj, protocol=protocol))


def _tiny_folder(folder, seed=0, protocol=2):
    """Write a valid tiny cifar-10-batches-py folder; return {file: (data, labels)}."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    content = {}
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        images = rng.integers(0, 256, (PER_FILE, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, PER_FILE).tolist()
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": images,
                              b"filenames": [b"x.png"] * PER_FILE}, protocol)
        content[name] = (images, labels)
    _dump(folder / cifar.META_FILE, {b"num_cases_per_batch": PER_FILE, b"num_vis": 3072,
                                     b"label_names": [c.encode() for c in CLASSES]}, protocol)
    return content


def _expected(content, names):
    images = np.concatenate([content[n][0] for n in names]).reshape(-1, 3, 32, 32)
    return images.astype(np.float32) / np.float32(255), np.concatenate([content[n][1] for n in names])


def _tarball(path, folder, arcname=TOP):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tiny_folder_in_root(tiny, tmp_path, protocol):
    content = _tiny_folder(tmp_path / "cifar10" / TOP, protocol=protocol)
    for train, names in ((True, cifar.TRAIN_FILES), (False, cifar.TEST_FILES)):
        ds = data.CIFAR10(tmp_path, train=train, download=False)
        images, labels = _expected(content, names)
        assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)
        assert ds.labels.dtype == np.int64 and ds.classes == CLASSES


# --------------------------------------------------------------------------------------------
# Broken folders: every structure check
# --------------------------------------------------------------------------------------------


def _replace(name, obj):
    def change(folder):
        _dump(folder / name, obj)
    return change


def _good_batch(changes):
    batch = {b"labels": [1] * PER_FILE, b"data": np.zeros((PER_FILE, 3072), np.uint8)}
    batch.update(changes)
    return {k: v for k, v in batch.items() if v is not None}


def _write_bytes(name, raw):
    def change(folder):
        (folder / name).write_bytes(raw)
    return change


def _truncate(name):
    def change(folder):
        raw = (folder / name).read_bytes()
        (folder / name).write_bytes(raw[: len(raw) // 2])
    return change


def _remove(name):
    def change(folder):
        (folder / name).unlink()
    return change


BROKEN = [
    ("data_batch_3", _remove("data_batch_3"), True, "incomplete CIFAR-10 folder, missing data_batch_3"),
    ("batches.meta", _remove("batches.meta"), False, "missing batches.meta"),
    ("test_batch", _remove("test_batch"), True, "missing test_batch"),
    ("data_batch_2", _write_bytes("data_batch_2", b"not a pickle at all"), True, "not a readable pickle"),
    ("test_batch", _truncate("test_batch"), False, "not a readable pickle"),
    ("test_batch", _write_bytes("test_batch", b""), False, "not a readable pickle"),
    ("data_batch_1", _replace("data_batch_1", [1, 2]), True, "expected a dict, got list"),
    ("test_batch", _replace("test_batch", _good_batch({b"data": None})), False, "no b'data' entry"),
    ("test_batch", _replace("test_batch", _good_batch({b"labels": None})), False, "no b'labels' entry"),
    ("test_batch", _replace("test_batch", _good_batch({b"data": np.zeros((PER_FILE, 3072), np.float32)})),
     False, "dtype 'f4': only uint8 arrays are read"),
    ("data_batch_5", _replace("data_batch_5", _good_batch({b"data": np.zeros((3, 3072), np.uint8)})),
     True, r"b'data' must be uint8 of shape \(4, 3072\), got uint8 \(3, 3072\)"),
    ("test_batch", _replace("test_batch", _good_batch({b"data": b"\0" * 3072 * PER_FILE})), False,
     "b'data' must be uint8 of shape .*got bytes"),
    ("test_batch", _replace("test_batch", _good_batch({b"labels": [1] * 3})), False,
     "b'labels' must be a list of 4 ints, got 3 entries"),
    ("test_batch", _replace("test_batch", _good_batch({b"labels": [1, 2, 10, 3]})), False,
     r"b'labels' must lie in 0..9, found 10"),
    ("test_batch", _replace("test_batch", _good_batch({b"labels": [1, -1, 0, 3]})), False,
     r"must lie in 0..9, found -1"),
    ("test_batch", _replace("test_batch", _good_batch({b"labels": [1, "2", 0, 3]})), False,
     "b'labels' must hold ints, found str"),
    ("test_batch", _replace("test_batch", _good_batch({b"labels": [1, True, 0, 3]})), False,
     "b'labels' must hold ints, found bool"),
    ("batches.meta", _replace("batches.meta", {b"label_names": [b"a"] * 9}), False,
     "b'label_names' must be a list of 10 names, got 9 entries"),
    ("batches.meta", _replace("batches.meta", {b"label_names": [b"a"] * 9 + [3]}), True,
     "class names must be non-empty strings, found 3"),
    ("batches.meta", _replace("batches.meta", {b"names": []}), True, "no b'label_names' entry"),
]


@pytest.mark.parametrize("name, change, train, match", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_broken_folder(tiny, tmp_path, name, change, train, match):
    folder = tmp_path / "cifar10" / TOP
    _tiny_folder(folder)
    change(folder)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(data.DatasetFormatError, match=match) as info:
        data.CIFAR10(tmp_path, train=train, download=True)
    message = str(info.value)
    assert message.startswith("CIFAR10: ") and str(folder) in message and name in message
    assert message.endswith(f"Delete {folder} to download a fresh copy")
    assert sorted(p.name for p in folder.iterdir()) == before  # a broken folder is reported, not touched


def test_whole_folder_check(tiny, tmp_path):
    folder = tmp_path / TOP
    _tiny_folder(folder)
    cifar.check_cifar_folder(folder)
    _dump(folder / "data_batch_4", {b"labels": [0] * PER_FILE})
    with pytest.raises(data.DatasetFormatError, match="data_batch_4: no b'data' entry"):
        cifar.check_cifar_folder(folder)


# --------------------------------------------------------------------------------------------
# Pickles that try to run code
# --------------------------------------------------------------------------------------------


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("make, refused", [
    (lambda m: _System(m), "it names (posix|os|nt).system"),
    (lambda m: {b"data": np.zeros((PER_FILE, 3072), np.uint8), b"labels": [_System(m)] * PER_FILE},
     "it names (posix|os|nt).system"),
    (lambda m: {b"labels": [_Eval(m)]}, "it names (__builtin__|builtins).eval"),
    (lambda m: {b"data": np.array([_System(m)], dtype=object)}, "(it names (posix|os|nt).system|dtype 'O8')"),
    (lambda m: {b"data": np.ma.masked_array(np.zeros(3, np.uint8))}, "it names numpy.ma"),
    (lambda m: {b"data": np.zeros(3, np.float64)}, "dtype 'f8'"),
])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_without_running(tiny, tmp_path, make, refused, protocol):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar10" / TOP
    _tiny_folder(folder)
    _dump(folder / "test_batch", make(marker), protocol)
    with pytest.raises(data.DatasetFormatError, match="refused to unpickle: " + refused) as info:
        data.CIFAR10(tmp_path, train=False)
    assert str(folder / "test_batch") in str(info.value)
    assert not marker.exists()  # nothing ran
    with pytest.raises(data.DatasetFormatError, match="refused to unpickle"):
        cifar.load_pickle(folder / "test_batch")
    assert not marker.exists()


class _Forged:
    """Pickles as NumPy's array reconstruction with arguments and state of our choosing."""

    def __init__(self, args, state):
        self.args, self.state = args, state

    def __reduce__(self):
        return np.zeros(1, np.uint8).__reduce__()[0], self.args, self.state


@pytest.mark.parametrize("obj, match", [
    (_Forged((np.ndarray, (0,), b"b"), (1, (1000000,), np.dtype(np.uint8), False, b"1234")),
     r"an ndarray of shape \(1000000,\) \(needs 1000000 bytes\) holding 4 bytes"),
    (_Forged((np.ndarray, (0,), b"b"), (1, (2,), np.dtype(np.uint8), False, [1, 2])),
     "an ndarray whose data is a list"),
    (_Forged((np.ndarray, (5,), b"b"), None), "numpy _reconstruct with unexpected arguments"),
    (_Forged((np.ma.MaskedArray, (0,), b"b"), None), "it names numpy.ma.*MaskedArray"),
    (_Forged((np.ndarray, (0,), b"b"), (1, (2,), None, False, b"12")), "an ndarray whose dtype is not uint8"),
])
def test_forged_array_pickles_are_refused(tmp_path, obj, match):
    path = tmp_path / "p"
    _dump(path, {b"data": obj})
    with pytest.raises(data.DatasetFormatError, match=f"{path}: refused to unpickle: {match}"):
        cifar.load_pickle(path)


def test_other_refusals(tmp_path):
    with pytest.raises(TypeError, match="load_pickle: path must be a file path"):
        cifar.load_pickle(None)
    with pytest.raises(pickle.UnpicklingError, match="dtype 'f8'"):
        cifar.RestrictedUnpickler(io.BytesIO(b"cnumpy\ndtype\n(Vf8\ntR.")).load()
    path = tmp_path / "p"
    path.write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")  # BINPERSID
    with pytest.raises(data.DatasetFormatError, match="persistent id"):
        cifar.load_pickle(path)


# --------------------------------------------------------------------------------------------
# Getting the folder: tarball and folder mirrors, public mirrors, offline
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tarball(tiny, tmp_path, monkeypatch):
    """A tiny CIFAR tarball in mirror/cifar10/; CIFAR10.archive expects its md5."""
    content = _tiny_folder(tmp_path / "src" / TOP, seed=1)
    (tmp_path / "mirror" / "cifar10").mkdir(parents=True)
    archive = _tarball(tmp_path / "mirror" / "cifar10" / "cifar-10-python.tar.gz", tmp_path / "src" / TOP)
    monkeypatch.setattr(data.CIFAR10, "archive", data.RemoteFile("cifar-10-python.tar.gz", md5(archive)))
    return content, tmp_path / "mirror"


def _check_loaded(ds, content):
    images, labels = _expected(content, cifar.TEST_FILES)
    assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)


def test_tarball_from_a_folder_mirror(tiny_tarball, tmp_path, monkeypatch):
    content, mirror = tiny_tarball
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    root = tmp_path / "root"
    _check_loaded(data.CIFAR10(root, train=False), content)
    assert md5(root / "cifar10" / "cifar-10-python.tar.gz") == data.CIFAR10.archive.md5  # kept, verified
    assert sorted(p.name for p in (root / "cifar10" / TOP).iterdir()) == sorted(FILES)
    assert leftovers(root / "cifar10") == []
    shutil.rmtree(root / "cifar10" / TOP)  # the kept tarball is extracted again, without a mirror
    monkeypatch.delenv(data.MIRROR_ENV)
    _check_loaded(data.CIFAR10(root, train=False, download=False), content)
    shutil.rmtree(root / "cifar10" / TOP)  # a damaged kept tarball is replaced by a good copy
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"damaged")
    with pytest.raises(FileNotFoundError, match="download=False"):
        data.CIFAR10(root, train=False, download=False)
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    _check_loaded(data.CIFAR10(root, train=False), content)
    assert md5(root / "cifar10" / "cifar-10-python.tar.gz") == data.CIFAR10.archive.md5


def test_tarball_from_url_mirrors(tiny_tarball, tmp_path, monkeypatch, http_mirror):  # noqa: F811
    content, mirror = tiny_tarball
    base = http_mirror(mirror)
    monkeypatch.setenv(data.MIRROR_ENV, base)
    _check_loaded(data.CIFAR10(tmp_path / "a", train=False), content)
    monkeypatch.delenv(data.MIRROR_ENV)  # the public mirror, with the mirror variable unset
    monkeypatch.setattr(data.CIFAR10, "mirrors", (base + "/missing/", base + "/cifar10/"))
    _check_loaded(data.CIFAR10(tmp_path / "b", train=False), content)


def test_mirror_tarball_preferred_to_mirror_folder(tiny_tarball, tmp_path, monkeypatch):
    content, mirror = tiny_tarball
    _tiny_folder(mirror / "cifar10" / TOP, seed=2)  # other content
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    _check_loaded(data.CIFAR10(tmp_path / "root", train=False), content)


def test_folder_mirror_when_tarball_is_bad(tiny_tarball, tmp_path, monkeypatch):
    _, mirror = tiny_tarball
    archive = mirror / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-10])  # wrong md5
    folder_content = _tiny_folder(mirror / "cifar10" / TOP, seed=2)
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    root = tmp_path / "root"
    _check_loaded(data.CIFAR10(root, train=False), folder_content)
    assert not (root / "cifar10" / "cifar-10-python.tar.gz").exists() and leftovers(root / "cifar10") == []


def test_folder_mirror_over_http(tiny, tmp_path, monkeypatch, http_mirror):  # noqa: F811
    content = _tiny_folder(tmp_path / "mirror" / "cifar10" / TOP)
    monkeypatch.setenv(data.MIRROR_ENV, http_mirror(tmp_path / "mirror") + "/")
    _check_loaded(data.CIFAR10(tmp_path / "root", train=False), content)


def test_broken_folder_mirror_is_not_copied(tiny, tmp_path, monkeypatch):
    _tiny_folder(tmp_path / "mirror" / "cifar10" / TOP)
    _dump(tmp_path / "mirror" / "cifar10" / TOP / "data_batch_2", {b"labels": [0] * PER_FILE})
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "mirror"))
    root = tmp_path / "root"
    with pytest.raises(data.DownloadError) as info:
        data.CIFAR10(root, train=False)
    message = str(info.value)
    assert "data_batch_2: no b'data' entry" in message and "cifar-10-python.tar.gz" in message
    assert message.splitlines()[-1].startswith(f"To fix: set {data.MIRROR_ENV}")
    assert not root.exists()  # nothing half-copied, no empty folder


def test_malicious_tarball_is_refused(tiny_tarball, tmp_path, monkeypatch):
    _, mirror = tiny_tarball
    archive = mirror / "cifar10" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in ((f"{TOP}/test_batch", b"x"), (f"{TOP}/../../../escaped", b"evil")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(data.CIFAR10, "archive", data.RemoteFile("cifar-10-python.tar.gz", md5(archive)))
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    root = tmp_path / "deep" / "er" / "root"
    with pytest.raises(data.UnsafeArchiveError, match="CIFAR10: .*refused to extract .*escaped.*leaves"):
        data.CIFAR10(root, train=False)
    assert not list(tmp_path.rglob("escaped"))
    assert not (root / "cifar10" / TOP).exists() and leftovers(root / "cifar10") == []


def test_tarball_with_bad_content_leaves_no_folder(tiny_tarball, tmp_path, monkeypatch):
    _, mirror = tiny_tarball
    (tmp_path / "bad" / TOP).mkdir(parents=True)
    (tmp_path / "bad" / TOP / "data_batch_1").write_bytes(b"x")
    archive = _tarball(mirror / "cifar10" / "cifar-10-python.tar.gz", tmp_path / "bad" / TOP)
    monkeypatch.setattr(data.CIFAR10, "archive", data.RemoteFile("cifar-10-python.tar.gz", md5(archive)))
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    root = tmp_path / "root"
    with pytest.raises(data.DatasetFormatError, match="CIFAR10: .*incomplete CIFAR-10 folder"):
        data.CIFAR10(root, train=False)
    assert not (root / "cifar10" / TOP).exists() and leftovers(root / "cifar10") == []


def test_offline_error_says_what_to_do_and_leaves_no_folder(tmp_path, monkeypatch):
    root = tmp_path / "root"
    with pytest.raises(data.DownloadError) as info:
        data.CIFAR10(root, train=False)
    hint = (f"To fix: set {data.MIRROR_ENV} to a folder or URL holding cifar10/cifar-10-python.tar.gz (or the "
            f"extracted {TOP}/), or put cifar-10-python.tar.gz (or the extracted {TOP}/) in "
            f"{root / 'cifar10'}{os.sep}.")
    assert str(info.value).endswith(hint)
    assert not root.exists()
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "empty-mirror"))
    with pytest.raises(data.DownloadError) as info:
        data.CIFAR10(root, train=False)
    assert str(tmp_path / "empty-mirror" / "cifar10") in str(info.value) and str(info.value).endswith(hint)
    assert not root.exists()
    with pytest.raises(FileNotFoundError, match="download=False. Pass download=True to fetch it. To fix") as info:
        data.CIFAR10(root, train=False, download=False)
    assert not root.exists()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"root": 5}, TypeError, "CIFAR10: root must be a folder path .*got int 5"),
    ({"root": b"data"}, TypeError, "CIFAR10: root must be a folder path"),
    ({"train": "yes"}, ValueError, "CIFAR10: train must be True or False, got 'yes'"),
    ({"download": 1}, ValueError, "CIFAR10: download must be True or False, got 1"),
])
def test_bad_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        data.CIFAR10(**{"root": tmp_path, **kwargs})


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="CIFAR10: root .* exists and is not a folder"):
        data.CIFAR10(tmp_path / "f")
