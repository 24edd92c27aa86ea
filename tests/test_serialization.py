"""minidl.save / minidl.load: exact round trips, no pickle, atomic writes, damaged files refused."""
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import minidl
from minidl import layers, optim
from minidl.serialization import SerializationError, atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree():
    """A tree with every supported kind of value, including awkward arrays and floats."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 6))
    return OrderedDict([
        ("z_first", "order is kept, not sorted"),
        ("arrays", [
            base.astype(np.float32), base, base.astype(np.float16), np.array(3.0),
            np.arange(12, dtype=np.int8).reshape(3, 4), np.array([2**64 - 1], dtype=np.uint64),
            np.array([True, False]), np.zeros((0, 3), np.float32), np.asfortranarray(base),
            base[:, ::2], base.astype(">f4"), (base + 1j * base).astype(np.complex64),
            np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324]),
        ]),
        ("scalars", (np.float32(1.1), np.int64(-7), np.bool_(True), np.float64(np.nan))),
        ("numbers", [0, -1, 2**100, 0.1, -0.0, float("inf"), float("nan"), 5e-324, 1.7976931348623157e308,
                     True, False, None]),
        ("strings", ["", "héllo wörld ✓", "line\nbreak", "\udc80 lone surrogate"]),
        ("int keys", {0: {"momentum_buffer": base}, 10: {}, -3: "x"}),
        ("other keys", {(1, "a"): 1, 2.5: 2, None: 3, True: 4}),
        ("empty", [[], (), {}, OrderedDict()]),
        ("a", {"nested": {"deeper": [({"k": np.ones(2)},)]}}),
    ])


def _assert_identical(a, b):
    """Same structure, container types, key order, value types and bits."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_identical(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_identical(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes(order="A") == np.asarray(b).tobytes(order="A")
    elif isinstance(a, float):
        assert repr(a) == repr(b)
    else:
        assert a == b


def test_round_trip_keeps_everything_exactly(tmp_path):
    tree = _tree()
    path = tmp_path / "tree"
    minidl.save(tree, path)
    loaded = minidl.load(path)
    _assert_identical(tree, loaded)
    arrays = loaded["arrays"]
    assert arrays[3].shape == () and arrays[8].flags.f_contiguous
    assert all(a.flags.writeable for a in arrays)
    assert type(loaded["scalars"][0]) is np.float32
    assert os.listdir(tmp_path) == ["tree"]  # exactly the path given, no temp file left


def test_file_is_a_documented_zip_with_json_header_and_npy_members(tmp_path):
    path = str(tmp_path / "model.weights")
    minidl.save({"w": np.arange(3.0), "epoch": 2, "lr": 0.1}, path)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["header.json", "arrays/0.npy"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        header = json.loads(archive.read("header.json"))
        array = np.load(io.BytesIO(archive.read("arrays/0.npy")), allow_pickle=False)
    assert header == {"format": "minidl", "version": 1, "arrays": 1,
                      "tree": {"dict": [["w", {"array": 0}], ["epoch", 2], ["lr", {"float": "0.1"}]]}}
    np.testing.assert_array_equal(array, np.arange(3.0))
    first = open(path, "rb").read()
    minidl.save({"w": np.arange(3.0), "epoch": 2, "lr": 0.1}, path)
    assert open(path, "rb").read() == first  # deterministic bytes


def test_model_and_optimizer_state_round_trip(tmp_path, rng):
    def build(seed):
        model = minidl.Sequential(layers.Dense(3, 5, rng=seed), layers.BatchNorm(5), layers.ReLU(),
                                  layers.Dense(5, 2, rng=seed + 1))
        return model, optim.Adam(model.parameters(), lr=0.01)

    x = rng.standard_normal((8, 3)).astype(np.float32)
    model, opt = build(0)
    for _ in range(3):
        model(x)
        model.backward(rng.standard_normal((8, 2)).astype(np.float32))
        opt.step()
        opt.zero_grad()
    minidl.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt")

    other, other_opt = build(7)
    state = minidl.load(tmp_path / "ckpt")
    other.load_state_dict(state["model"])
    other_opt.load_state_dict(state["optimizer"])
    dout = rng.standard_normal((8, 2)).astype(np.float32)
    for m, o in ((model, opt), (other, other_opt)):
        m(x)
        m.backward(dout)
        o.step()
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("value, where", [
    ({"a": [1, np.array([object()], dtype=object)]}, r"obj\['a'\]\[1\] is an array of dtype object"),
    ({"a": {1, 2}}, r"obj\['a'\] is a set"),
    ([b"bytes"], r"obj\[0\] is a bytes"),
    ({"f": lambda: 0}, r"obj\['f'\] is a function"),
])
def test_unsupported_values_name_their_place_and_write_nothing(tmp_path, value, where):
    with pytest.raises(TypeError, match=where):
        minidl.save(value, tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_a_tree_containing_itself_is_refused(tmp_path):
    loop = {"a": []}
    loop["a"].append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        minidl.save(loop, tmp_path / "x")
    shared = [1]
    minidl.save({"a": shared, "b": shared}, tmp_path / "y")  # the same object twice is fine
    assert minidl.load(tmp_path / "y") == {"a": [1], "b": [1]}


def test_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minidl.save({}, tmp_path / "missing" / "x")
    with pytest.raises(IsADirectoryError):
        minidl.save({}, tmp_path)
    with pytest.raises(FileNotFoundError):
        minidl.load(tmp_path / "nothing")
    with pytest.raises(TypeError, match="expected a path"):
        minidl.save({}, 3)
    with pytest.raises(TypeError, match="expected a path"):
        minidl.load(None)


def test_new_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        minidl.save({}, tmp_path / "x")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "x").st_mode & 0o777 == 0o644
    os.chmod(tmp_path / "x", 0o600)
    minidl.save({"again": 1}, tmp_path / "x")
    assert os.stat(tmp_path / "x").st_mode & 0o777 == 0o600  # a replaced file keeps its mode


def test_atomic_write_leaves_the_old_file_when_the_block_fails(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["log.csv"]


def _small_file(tmp_path):
    path = tmp_path / "small"
    tree = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "step": 3, "name": "model",
            "lr": 0.05, "state": {0: np.ones(2)}}
    minidl.save(tree, path)
    return path, tree, path.read_bytes()


def test_truncations_are_refused_naming_the_file(tmp_path):
    path, _, data = _small_file(tmp_path)
    cut = tmp_path / "cut"
    for length in sorted(set(range(0, len(data), 11)) | set(range(len(data) - 64, len(data)))):
        cut.write_bytes(data[:length])
        with pytest.raises(SerializationError, match=str(cut)) as info:
            minidl.load(cut)
        assert info.value.path == str(cut)


def test_every_corrupted_byte_is_refused_or_harmless(tmp_path):
    """Flip each byte in turn: load raises SerializationError or returns the exact original
    (a few bytes, e.g. timestamps in the local headers, are not read)."""
    _, tree, data = _small_file(tmp_path)
    bad = tmp_path / "bad"
    refused = 0
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        bad.write_bytes(bytes(damaged))
        try:
            loaded = minidl.load(bad)
        except SerializationError:
            refused += 1
            continue
        _assert_identical(tree, loaded)
    assert refused > 0.8 * len(data)


def test_foreign_files_are_refused(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello world\n",
        "pickle": pickle.dumps({"weight": np.ones(3)}),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "plain.npz", weight=np.ones(3))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("header.json", json.dumps({"format": "something else"}))
    with zipfile.ZipFile(tmp_path / "newer", "w") as archive:
        archive.writestr("header.json", json.dumps({"format": "minidl", "version": 2, "arrays": 0,
                                                    "tree": None}))
    with zipfile.ZipFile(tmp_path / "badtree", "w") as archive:
        archive.writestr("header.json", json.dumps({"format": "minidl", "version": 1, "arrays": 0,
                                                    "tree": {"array": 0}}))
    messages = {}
    for name in sorted(os.listdir(tmp_path)):
        with pytest.raises(SerializationError) as info:
            minidl.load(tmp_path / name)
        messages[name] = str(info.value)
        assert str(tmp_path / name) in messages[name]
    assert "no header.json" in messages["plain.npz"]
    assert "newer minidl" in messages["newer"] and "version 2" in messages["newer"]
    assert "out of range" in messages["badtree"]
    assert isinstance(SerializationError("p", "r"), ValueError)


def test_load_never_unpickles(tmp_path):
    """An object array (a pickle inside the .npy) is refused and its code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    npy = io.BytesIO()
    np.lib.format.write_array(npy, np.array([Payload()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil", "w") as archive:
        archive.writestr("header.json", json.dumps({"format": "minidl", "version": 1, "arrays": 1,
                                                    "tree": {"array": 0}}))
        archive.writestr("arrays/0.npy", npy.getvalue())
    with pytest.raises(SerializationError, match="evil"):
        minidl.load(tmp_path / "evil")
    assert not marker.exists()


_WRITER = r"""
import os, signal, sys
import numpy as np
import minidl, minidl.serialization as serialization

path, mode = sys.argv[1], sys.argv[2]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "mid_write":          # half of the second array's bytes written, then killed
    real = np.lib.format.write_array
    def partial(f, array, **kwargs):
        if array.size > 10:
            buffer = __import__("io").BytesIO()
            real(buffer, array, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()
        real(f, array, **kwargs)
    np.lib.format.write_array = partial
elif mode == "before_replace":   # complete and fsynced temp file, not yet renamed
    os.replace = die
elif mode == "after_replace":    # renamed, folder not yet fsynced
    serialization._fsync_directory = die

data = np.empty(1_000_000)
print("started", flush=True)
version = 0
while True:
    version += 1
    data.fill(version)
    minidl.save({"version": version, "marker": np.arange(3), "data": data}, path)
"""


def _start_writer(tmp_path, path, mode):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    return subprocess.Popen([sys.executable, str(script), str(path), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_consistent(path):
    state = minidl.load(path)
    assert np.all(state["data"] == state["version"]), "data from another version"
    return state["version"]


@pytest.mark.parametrize("mode, expected", [("mid_write", 0), ("before_replace", 0),
                                            ("after_replace", 1)])
def test_writer_killed_at_each_stage(tmp_path, mode, expected):
    path = tmp_path / "ckpt"
    minidl.save({"version": 0, "marker": np.arange(3), "data": np.zeros(1_000_000)}, path)
    writer = _start_writer(tmp_path, path, mode)
    assert writer.wait(timeout=60) == -signal.SIGKILL, writer.stderr.read()
    assert _check_consistent(path) == expected
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".ckpt.")]
    assert len(leftovers) == (0 if mode == "after_replace" else 1)  # never under the final name


def test_writer_killed_at_random_points_leaves_a_complete_file(tmp_path):
    path = tmp_path / "ckpt"
    minidl.save({"version": 0, "marker": np.arange(3), "data": np.zeros(1_000_000)}, path)
    chooser = random.Random(0)
    versions = []
    for _ in range(5):
        writer = _start_writer(tmp_path, path, "loop")
        assert writer.stdout.readline().strip() == "started", writer.stderr.read()
        time.sleep(chooser.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        writer.stdout.close()
        writer.stderr.close()
        versions.append(_check_consistent(path))
    assert max(versions) >= 1  # the writer did replace the file in between
