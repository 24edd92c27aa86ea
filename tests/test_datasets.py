"""Tests for minidl.data.datasets: MNIST/Fashion-MNIST readers, md5 checks and mirrors, the IDX
parser, declaring a new file dataset, ArrayDataset, and argument checks."""
import gzip
import os
import shutil
import struct

import numpy as np
import pytest

from datahelpers import flip_byte, http_mirror, leftovers, md5, offline  # noqa: F401 (fixtures)
from minidl import data

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

T10K_IMAGES = "t10k-images-idx3-ubyte.gz"
T10K_LABELS = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(scope="session")
def mnist_root(real_mirror, tmp_path_factory):  # noqa: F811
    """A root holding all MNIST files, fetched once through the mirror."""
    root = tmp_path_factory.mktemp("mnist_root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data.MNIST, "mirrors", ())
        mp.setenv(data.MIRROR_ENV, real_mirror)
        train = data.MNIST(root, train=True)
        test = data.MNIST(root, train=False)
    return root, train, test


@pytest.fixture
def local_mirror(mnist_root, tmp_path):
    """A writable mirror folder with good copies of the MNIST test files (mirror/mnist/...)."""
    root = mnist_root[0]
    folder = tmp_path / "mirror" / "mnist"
    folder.mkdir(parents=True)
    for name in (T10K_IMAGES, T10K_LABELS):
        shutil.copyfile(root / "mnist" / name, folder / name)
    return tmp_path / "mirror"


# --------------------------------------------------------------------------------------------
# Real data through the mirror
# --------------------------------------------------------------------------------------------


def test_mnist_test_set(mnist_root):
    root, _, test = mnist_root
    for spec in data.MNIST.files["test"].values():
        path = root / "mnist" / spec.name
        assert path.is_file() and not path.is_symlink()  # copied into root: self-contained
        assert md5(path) == spec.md5
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.images.dtype == np.float32 and test.images.flags.c_contiguous
    assert test.images.min() == 0.0 and test.images.max() == 1.0
    assert test.labels.shape == (10000,) and test.labels.dtype == np.int64
    assert np.bincount(test.labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert test.classes == [str(d) for d in range(10)]
    assert len(test) == 10000 and test.split == "test"
    image, label = test[0]
    assert image.shape == (1, 28, 28) and label == 7
    images, labels = test[10:20]
    assert images.shape == (10, 1, 28, 28) and labels.tolist() == test.labels[10:20].tolist()
    images, labels = test[np.array([3, 1, 3])]
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [0, 2, 0]
    assert test.arrays()[0] is test.images and test.arrays()[1] is test.labels


def test_mnist_train_set(mnist_root):
    _, train, _ = mnist_root
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.float32
    assert train.labels.shape == (60000,) and train.labels.dtype == np.int64
    assert 0 <= train.labels.min() and train.labels.max() <= 9
    counts = np.bincount(train.labels, minlength=10)
    assert counts.sum() == 60000 and counts.tolist() == MNIST_TRAIN_COUNTS
    # The normalization constants everybody uses: mean 0.1307, std 0.3081 (pixels / 255).
    assert abs(float(train.images.mean(dtype=np.float64)) - 0.1307) < 1e-4
    assert abs(float(train.images.std(dtype=np.float64)) - 0.3081) < 1e-4


def test_fashion_mnist_test_set(real_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(data.MIRROR_ENV, real_mirror)
    fashion = data.FashionMNIST(tmp_path, train=False)
    assert fashion.images.shape == (10000, 1, 28, 28) and fashion.images.dtype == np.float32
    assert 0.0 <= fashion.images.min() and fashion.images.max() <= 1.0
    assert fashion.labels.dtype == np.int64
    assert np.bincount(fashion.labels, minlength=10).tolist() == [1000] * 10
    assert len(fashion.classes) == 10 and fashion.classes[9] == "Ankle boot"
    for spec in data.FashionMNIST.files["test"].values():
        assert md5(tmp_path / "fashion-mnist" / spec.name) == spec.md5


def test_existing_files_are_reused_without_mirror(mnist_root):
    root = mnist_root[0]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "mnist").iterdir()}
    test = data.MNIST(root, train=False, download=False)  # no mirror set at all
    assert len(test) == 10000
    assert {p.name: p.stat().st_mtime_ns for p in (root / "mnist").iterdir()} == before


# --------------------------------------------------------------------------------------------
# Missing and corrupted files
# --------------------------------------------------------------------------------------------


def test_download_false_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.MNIST(tmp_path, train=False, download=False)
    message = str(info.value)
    assert T10K_IMAGES in message and "download=True" in message and data.MIRROR_ENV in message
    assert not (tmp_path / "mnist").exists()


def test_corrupted_mirror_file_raises_and_leaves_nothing(local_mirror, tmp_path, monkeypatch):
    flip_byte(local_mirror / "mnist" / T10K_LABELS)
    bad_md5 = md5(local_mirror / "mnist" / T10K_LABELS)
    monkeypatch.setenv(data.MIRROR_ENV, str(local_mirror))
    root = tmp_path / "root"
    with pytest.raises(data.ChecksumError) as info:
        data.MNIST(root, train=False)
    message = str(info.value)
    expected = data.MNIST.files["test"]["labels"].md5
    assert T10K_LABELS in message and expected in message and bad_md5 in message
    assert str(local_mirror / "mnist" / T10K_LABELS) in message  # the source tried
    assert not (root / "mnist" / T10K_LABELS).exists()
    assert leftovers(root / "mnist") == []
    assert (root / "mnist" / T10K_IMAGES).is_file()  # the good file was kept


def test_corrupted_file_in_root(local_mirror, mnist_root, tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    for name in (T10K_IMAGES, T10K_LABELS):
        shutil.copyfile(mnist_root[0] / "mnist" / name, root / "mnist" / name)
    flip_byte(root / "mnist" / T10K_LABELS)
    with pytest.raises(data.ChecksumError, match=T10K_LABELS):
        data.MNIST(root, train=False, download=False)
    monkeypatch.setenv(data.MIRROR_ENV, str(local_mirror))
    test = data.MNIST(root, train=False, download=True)  # replaced by the mirror's good copy
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert md5(root / "mnist" / T10K_LABELS) == data.MNIST.files["test"]["labels"].md5


def test_missing_everywhere_raises_download_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "empty"))
    with pytest.raises(data.DownloadError) as info:
        data.MNIST(tmp_path / "root", train=False)
    assert T10K_IMAGES in str(info.value) and str(tmp_path / "empty") in str(info.value)
    assert str(info.value).endswith(f"To fix: set {data.MIRROR_ENV} to a folder or URL holding mnist/{T10K_IMAGES}, "
                                    f"or put {T10K_IMAGES} in {tmp_path / 'root' / 'mnist'}{os.sep}.")
    assert not (tmp_path / "root").exists()  # no empty folder left behind


def test_no_sources_at_all(tmp_path):
    with pytest.raises(data.DownloadError, match=f"no source to fetch it from. To fix: set {data.MIRROR_ENV}"):
        data.MNIST(tmp_path / "root", train=False)
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------------------------
# The IDX parser
# --------------------------------------------------------------------------------------------


def _idx_bytes(array, type_code=0x08, ndim=None, magic_prefix=b"\x00\x00"):
    array = np.asarray(array)
    ndim = array.ndim if ndim is None else ndim
    header = magic_prefix + bytes([type_code, ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_gz(path, payload):
    path.write_bytes(gzip.compress(payload))
    return path


def test_read_idx_roundtrip(tmp_path):
    images = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4)
    out = data.read_idx(_write_gz(tmp_path / "x.gz", _idx_bytes(images)))
    assert out.dtype == np.uint8 and out.shape == (3, 2, 4) and np.array_equal(out, images)
    assert out.flags.writeable
    ints = np.array([[1, -2], [300000, 7]], dtype=np.int32)
    (tmp_path / "i.idx").write_bytes(_idx_bytes(ints, type_code=0x0C))  # uncompressed works too
    out = data.read_idx(tmp_path / "i.idx")
    assert out.dtype == np.int32 and out.dtype.isnative and np.array_equal(out, ints)


@pytest.mark.parametrize("payload, match", [
    (_idx_bytes(np.zeros(4, np.uint8), magic_prefix=b"\x08\x03"), "bad magic"),
    (_idx_bytes(np.zeros(4, np.uint8), type_code=0x07), "bad magic"),
    (_idx_bytes(np.zeros(4, np.uint8), ndim=0), "bad magic"),
    (b"\x00\x00", "shorter than"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x05", "truncated IDX header"),
    (_idx_bytes(np.zeros((5, 4, 4), np.uint8))[:-3], "truncated"),
    (_idx_bytes(np.zeros((5, 4, 4), np.uint8)) + b"\x00", "trailing bytes"),
])
def test_read_idx_broken(tmp_path, payload, match):
    path = _write_gz(tmp_path / "broken-idx3-ubyte.gz", payload)
    with pytest.raises(data.DatasetFormatError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_broken_gzip(tmp_path):
    good = gzip.compress(_idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(data.DatasetFormatError, match="gzip") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# Declaring a new file dataset; shape checks of IDX image datasets
# --------------------------------------------------------------------------------------------


def _tiny_mirror(tmp_path, n_images=6, n_labels=6, shape=(4, 4)):
    folder = tmp_path / "tiny-mirror" / "tiny"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, *shape), dtype=np.uint8)
    labels = rng.integers(0, 3, n_labels, dtype=np.uint8)
    img = _write_gz(folder / "img.gz", _idx_bytes(images))
    lab = _write_gz(folder / "lab.gz", _idx_bytes(labels))

    class Tiny(data.IDXImageDataset):
        folder = "tiny"
        image_shape = (4, 4)
        classes = ["a", "b", "c"]
        files = {split: {"images": data.RemoteFile("img.gz", md5(img)),
                         "labels": data.RemoteFile("lab.gz", md5(lab))} for split in ("train", "test")}

    return Tiny, tmp_path / "tiny-mirror", images, labels


def test_subclass_declares_its_files(tmp_path, monkeypatch):
    Tiny, mirror, images, labels = _tiny_mirror(tmp_path)
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    tiny = Tiny(tmp_path / "root")
    assert tiny.images.shape == (6, 1, 4, 4) and tiny.images.dtype == np.float32
    assert np.array_equal(tiny.images[:, 0], images / np.float32(255))
    assert np.array_equal(tiny.labels, labels) and tiny.labels.dtype == np.int64
    assert (tmp_path / "root" / "tiny" / "img.gz").is_file()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_labels": 5}, "6 images .* but 5 labels"),
    ({"shape": (4, 5)}, r"expected uint8 images of shape \(N, 4, 4\)"),
])
def test_idx_dataset_checks_shapes(tmp_path, monkeypatch, kwargs, match):
    Tiny, mirror, _, _ = _tiny_mirror(tmp_path, **kwargs)
    monkeypatch.setenv(data.MIRROR_ENV, str(mirror))
    with pytest.raises(data.DatasetFormatError, match=match):
        Tiny(tmp_path / "root")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"train": "test"}, ValueError, "MNIST: train must be True or False, got 'test'"),
    ({"download": None}, ValueError, "MNIST: download must be True or False, got None"),
    ({"root": 3}, TypeError, "MNIST: root must be a folder path \\(str or os.PathLike\\), got int 3"),
    ({"root": None}, TypeError, "MNIST: root must be a folder path"),
])
def test_dataset_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        data.MNIST(**{"root": tmp_path, "download": False, **kwargs})


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="FashionMNIST: root .* exists and is not a folder"):
        data.FashionMNIST(tmp_path / "f")


# --------------------------------------------------------------------------------------------
# URL mirrors and falling through to the next source
# --------------------------------------------------------------------------------------------


def test_url_mirror(local_mirror, http_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(data.MIRROR_ENV, http_mirror(local_mirror) + "/")
    test = data.MNIST(tmp_path / "root", train=False)
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert leftovers(tmp_path / "root" / "mnist") == []


def test_first_source_failing_falls_through(local_mirror, http_mirror, tmp_path, monkeypatch):
    base = http_mirror(local_mirror)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path / "empty"))  # lacks the files
    monkeypatch.setattr(data.MNIST, "mirrors", (base + "/missing/", base + "/mnist/"))  # 404, then good
    test = data.MNIST(tmp_path / "root", train=False)
    assert len(test) == 10000
    assert leftovers(tmp_path / "root" / "mnist") == []


def test_wrong_md5_from_every_source(local_mirror, http_mirror, tmp_path, monkeypatch):
    flip_byte(local_mirror / "mnist" / T10K_IMAGES, offset=5000)
    base = http_mirror(local_mirror)
    monkeypatch.setenv(data.MIRROR_ENV, str(local_mirror))
    monkeypatch.setattr(data.MNIST, "mirrors", (base + "/nothing-here/", base + "/mnist/"))
    root = tmp_path / "root"
    with pytest.raises(data.ChecksumError) as info:
        data.MNIST(root, train=False)
    message = str(info.value)
    assert T10K_IMAGES in message and data.MNIST.files["test"]["images"].md5 in message
    assert md5(local_mirror / "mnist" / T10K_IMAGES) in message
    for source in (str(local_mirror / "mnist" / T10K_IMAGES), base + "/nothing-here/" + T10K_IMAGES,
                   base + "/mnist/" + T10K_IMAGES):
        assert source in message
    assert "404" in message
    assert not (root / "mnist" / T10K_IMAGES).exists() and leftovers(root / "mnist") == []


# --------------------------------------------------------------------------------------------
# ArrayDataset and DataLoader
# --------------------------------------------------------------------------------------------


def _toy(n=10):
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 1, 2, 3)
    y = np.arange(n, dtype=np.int64)
    return data.ArrayDataset(x, y)


def test_array_dataset():
    ds = _toy()
    assert len(ds) == 10
    x, y = ds[3]
    assert x.shape == (1, 2, 3) and y == 3
    xs, ys = ds[2:5]
    assert xs.shape == (3, 1, 2, 3) and ys.tolist() == [2, 3, 4]
    with pytest.raises(ValueError, match="ArrayDataset"):
        data.ArrayDataset(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="ArrayDataset"):
        data.ArrayDataset()
    with pytest.raises(ValueError, match="ArrayDataset"):
        data.ArrayDataset(np.float32(1.0))
    with pytest.raises(ValueError, match="ArrayDataset: every argument must convert to one NumPy array"):
        data.ArrayDataset([[1, 2], [3]])


@pytest.mark.parametrize("index", [10, -11, "a", 1.5, np.array([0, 12]), (0, 0, 0, 0, 0)])
def test_array_dataset_bad_index(index):
    with pytest.raises(IndexError, match=r"ArrayDataset: bad index .* for 10 samples \(an int, a slice"):
        _toy()[index]


def test_read_idx_bad_path():
    with pytest.raises(TypeError, match="read_idx: path must be a file path \\(str or os.PathLike\\), got int 3"):
        data.read_idx(3)


def test_loader_on_mnist(mnist_root):
    test = mnist_root[2]
    loader = data.DataLoader(test, batch_size=256, shuffle=True, seed=0, drop_last=True)
    assert len(loader) == 10000 // 256
    x, y = next(iter(loader))
    assert x.shape == (256, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (256,) and y.dtype == np.int64
    counts = np.bincount(np.concatenate([y for _, y in data.DataLoader(test, batch_size=1000)]))
    assert counts.tolist() == MNIST_TEST_COUNTS
