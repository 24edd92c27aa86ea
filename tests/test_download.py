"""Tests for minidl.data.download: sources, md5 checks, timeouts and deadlines, atomic placement,
clean failures and safe tar extraction, against a local HTTP server on 127.0.0.1."""
import io
import os
import socket
import tarfile
import time
from pathlib import Path

import pytest

from datahelpers import http_mirror, leftovers, md5, offline  # noqa: F401 (fixtures)
from minidl import data
from minidl.data import download

PAYLOAD = bytes(range(256)) * 400  # 100 kB
NAME = "file.bin"


@pytest.fixture
def served(tmp_path, http_mirror):  # noqa: F811
    """A folder ``site/ds/file.bin`` served over HTTP; returns the base URL."""
    (tmp_path / "site" / "ds").mkdir(parents=True)
    (tmp_path / "site" / "ds" / NAME).write_bytes(PAYLOAD)
    return http_mirror(tmp_path / "site")


@pytest.fixture
def fast(monkeypatch):
    """Tiny per-read timeout and deadline, so misbehaving servers cost a fraction of a second."""
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT", 0.3)
    monkeypatch.setattr(download, "DOWNLOAD_DEADLINE", 0.5)


def _get(sources, dest):
    return download.download_file(NAME, md5(PAYLOAD), sources, dest)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def test_source_order(monkeypatch):
    mirrors = ("https://a.example/mnist/", "http://b.example/x")
    assert download.file_sources("mnist", "f.gz", mirrors) == ["https://a.example/mnist/f.gz",
                                                               "http://b.example/x/f.gz"]
    monkeypatch.setenv(data.MIRROR_ENV, "https://host/path/")
    assert download.file_sources("mnist", "f.gz", mirrors)[0] == "https://host/path/mnist/f.gz"
    monkeypatch.setenv(data.MIRROR_ENV, "/some/folder")
    sources = download.file_sources("fashion-mnist", "f.gz", mirrors)
    assert sources[0] == os.path.join("/some/folder", "fashion-mnist", "f.gz") and sources[1:] == [
        "https://a.example/mnist/f.gz", "http://b.example/x/f.gz"]
    monkeypatch.setenv(data.MIRROR_ENV, "  ")
    assert len(download.file_sources("mnist", "f.gz", mirrors)) == 2
    assert download.mirror_base() is None


def test_public_mirrors_declared():
    from datahelpers import PUBLIC_MIRRORS  # read at import, before the offline fixture
    assert PUBLIC_MIRRORS[data.MNIST] == ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                                          "http://yann.lecun.com/exdb/mnist/")
    assert PUBLIC_MIRRORS[data.FashionMNIST] == ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    assert PUBLIC_MIRRORS[data.CIFAR10] == ("https://www.cs.toronto.edu/~kriz/",)


# --------------------------------------------------------------------------------------------
# Good, corrupted, truncated, stalled, slow and endless sources
# --------------------------------------------------------------------------------------------


def test_good_url(served, tmp_path):
    path = _get([served + "/ds/" + NAME], tmp_path / "dest")
    assert Path(path).read_bytes() == PAYLOAD and leftovers(tmp_path / "dest") == []


@pytest.mark.parametrize("mode, match", [
    ("corrupt", "received md5"),
    ("truncated", "truncated transfer: received 51200 of 102400 bytes"),
    ("stall", "stalled for more than 0.3 s"),
    ("trickle", "0.5 s deadline for one download passed"),
])
def test_bad_source_is_abandoned_for_the_next(served, tmp_path, fast, mode, match):
    dest = tmp_path / "dest"
    bad, good = f"{served}/{mode}/ds/{NAME}", f"{served}/ds/{NAME}"
    start = time.monotonic()
    path = _get([bad, good], dest)
    assert time.monotonic() - start < 5
    assert Path(path).read_bytes() == PAYLOAD and leftovers(dest) == []
    with pytest.raises((data.ChecksumError, data.DownloadError), match=match) as info:
        _get([bad], tmp_path / "other")
    assert bad in str(info.value)
    assert not (tmp_path / "other").exists()  # no empty folder, no partial file


def test_endless_source_hits_the_deadline(served, tmp_path, fast):
    start = time.monotonic()
    with pytest.raises(data.DownloadError, match="deadline for one download passed"):
        _get([served + "/endless"], tmp_path / "dest")
    assert time.monotonic() - start < 3


def test_deadline_and_timeout_as_arguments(served, tmp_path):
    with pytest.raises(data.DownloadError, match="0.5 s deadline"):
        download.download_file(NAME, md5(PAYLOAD), [f"{served}/trickle/ds/{NAME}"], tmp_path, deadline=0.5)
    with pytest.raises(data.DownloadError, match="stalled for more than 0.2 s"):
        download.download_file(NAME, md5(PAYLOAD), [f"{served}/stall/ds/{NAME}"], tmp_path, timeout=0.2)


def test_partial_file_never_under_final_name(served, tmp_path, fast, monkeypatch):
    """While a transfer runs, only the temporary name exists; a failure removes it."""
    dest = tmp_path / "dest"
    seen = []
    real_copy = download._copy_stream

    def spy(src, dst, digest, deadline, progress=None):
        seen.append(sorted(p.name for p in dest.iterdir()))
        return real_copy(src, dst, digest, deadline, progress)

    monkeypatch.setattr(download, "_copy_stream", spy)
    with pytest.raises(data.DownloadError):
        _get([f"{served}/truncated/ds/{NAME}"], dest)
    (tmp_name,) = seen[0]  # during the transfer: the temporary file only
    assert tmp_name.startswith(f".{NAME}.") and tmp_name.endswith(".part")
    assert not dest.exists()


def test_good_existing_file_is_never_overwritten(served, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / NAME).write_bytes(PAYLOAD)
    os.utime(dest / NAME, ns=(1, 1))
    path = _get([f"{served}/corrupt/ds/{NAME}"], dest)  # the good file is used, nothing fetched
    assert Path(path).read_bytes() == PAYLOAD and (dest / NAME).stat().st_mtime_ns == 1


def test_bad_existing_file_is_replaced_only_by_a_good_copy(served, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / NAME).write_bytes(b"old")
    with pytest.raises(data.ChecksumError):
        _get([f"{served}/corrupt/ds/{NAME}"], dest)
    assert (dest / NAME).read_bytes() == b"old" and leftovers(dest) == []
    _get([f"{served}/corrupt/ds/{NAME}", f"{served}/ds/{NAME}"], dest)
    assert (dest / NAME).read_bytes() == PAYLOAD


def test_unreachable_url_falls_through_to_a_folder(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / NAME).write_bytes(PAYLOAD)
    with socket.socket() as s:  # a port that was free a moment ago: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    path = _get([f"http://127.0.0.1:{port}/{NAME}", str(tmp_path / "src" / NAME)], tmp_path / "dest")
    assert Path(path).read_bytes() == PAYLOAD and leftovers(tmp_path / "dest") == []


def test_failure_ends_with_what_to_do_and_leaves_no_folder(tmp_path):
    dest = tmp_path / "root" / "ds"
    with pytest.raises(data.DownloadError) as info:
        _get([str(tmp_path / "nowhere" / NAME)], dest)
    message = str(info.value)
    assert message.splitlines()[-1] == (f"To fix: set {data.MIRROR_ENV} to a folder or URL holding ds/{NAME}, "
                                        f"or put {NAME} in {dest}{os.sep}.")
    assert str(tmp_path / "nowhere" / NAME) in message
    assert not (tmp_path / "root").exists()  # both created folders removed again
    with pytest.raises(data.DownloadError, match="no source to fetch it from. To fix"):
        _get([], dest)


def test_folders_that_existed_are_kept(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(data.DownloadError):
        _get([str(tmp_path / "nowhere")], tmp_path / "root" / "ds")
    assert (tmp_path / "root").is_dir() and not (tmp_path / "root" / "ds").exists()


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------


def _tar(path, members):
    """Write a .tar.gz with ``members``: (name, bytes) files or (name, TarInfo-type, linkname)."""
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if len(member) == 2:
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
            else:
                info.type, info.linkname = member[1], member[2]
                tar.addfile(info)
    return path


def test_extract_tar(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [("top", tarfile.DIRTYPE, ""), ("top/x", b"1"), ("./top/sub/y", b"22")])
    (tmp_path / "out").mkdir()
    checked = []
    path = download.extract_tar(archive, tmp_path / "out", "top", check=checked.append)
    assert Path(path) == tmp_path / "out" / "top"
    assert (tmp_path / "out" / "top" / "x").read_bytes() == b"1"
    assert (tmp_path / "out" / "top" / "sub" / "y").read_bytes() == b"22"
    assert len(checked) == 1 and Path(checked[0]).name == "top" and Path(checked[0]) != Path(path)
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("member, match", [
    (("top/../../evil", b"x"), "leaves the extraction folder"),
    (("/tmp/evil-abs", b"x"), "leaves the extraction folder"),
    (("top/../top2/x", b"x"), "leaves the extraction folder"),
    (("other/x", b"x"), "must lie in top/"),
    (("top", b"x"), "must lie in top/"),
    (("top/link", tarfile.SYMTYPE, "/etc/passwd"), "a link"),
    (("top/hard", tarfile.LNKTYPE, "top/x"), "a link"),
    (("top/fifo", tarfile.FIFOTYPE, ""), "a special file"),
])
def test_extract_tar_refuses_unsafe_members(tmp_path, member, match):
    archive = _tar(tmp_path / "bad.tar.gz", [("top/x", b"1"), member])
    (tmp_path / "out").mkdir()
    with pytest.raises(data.UnsafeArchiveError, match=match) as info:
        download.extract_tar(archive, tmp_path / "out", "top")
    assert str(archive) in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []  # nothing written, not even the good member
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()


def test_extract_tar_check_failure_leaves_nothing(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [("top/x", b"1")])
    (tmp_path / "out").mkdir()

    def refuse(folder):
        raise ValueError("bad content")

    with pytest.raises(ValueError, match="bad content"):
        download.extract_tar(archive, tmp_path / "out", "top", check=refuse)
    assert list((tmp_path / "out").iterdir()) == []


def test_extract_tar_keeps_a_folder_that_appeared_meanwhile(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [("top/x", b"new")])
    (tmp_path / "out" / "top").mkdir(parents=True)
    (tmp_path / "out" / "top" / "x").write_bytes(b"old")
    download.extract_tar(archive, tmp_path / "out", "top")
    assert (tmp_path / "out" / "top" / "x").read_bytes() == b"old" and leftovers(tmp_path / "out") == []
