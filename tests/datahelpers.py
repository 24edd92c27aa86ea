"""Shared fixtures and helpers for the minidl.data tests (import the fixtures into a test module).

The real files come from the ``real_mirror`` fixture of conftest.py (``MINIDL_DATA_MIRROR``, which
CI sets to the shared data folder, else ``../shared/data`` next to the repository). The ``offline``
fixture switches the public internet mirrors off, so nothing leaves the machine.
"""
import functools
import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest

from minidl import data

PUBLIC_MIRRORS = {cls: cls.mirrors for cls in (data.MNIST, data.FashionMNIST, data.CIFAR10)}


def md5(path_or_bytes):
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.md5(raw).hexdigest()


def leftovers(folder):
    """Temporary files or folders (``.name.pid-random.part`` / ``.tmp``) left in ``folder``."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def flip_byte(path, offset=100):
    raw = bytearray(Path(path).read_bytes())
    raw[offset] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No public internet mirrors, and no mirror variable unless a test sets one."""
    for cls in PUBLIC_MIRRORS:
        monkeypatch.setattr(cls, "mirrors", ())
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths under /corrupt/, /truncated/, /stall/ and /trickle/ misbehave.

    - ``/corrupt/<path>``: the file with one byte flipped;
    - ``/truncated/<path>``: announces the full length, sends half, closes;
    - ``/stall/<path>``: announces the file, then sends nothing (a read timeout);
    - ``/trickle/<path>``: sends a byte every 10 ms, forever (only a deadline stops it);
    - ``/endless``: sends chunks as fast as it can, forever, no Content-Length.
    """

    def log_message(self, *args):
        pass

    def _file(self, rest):
        path = Path(self.directory) / rest.lstrip("/")
        return path.read_bytes() if path.is_file() else None

    def do_GET(self):  # noqa: N802 (http.server's naming)
        mode, _, rest = self.path.lstrip("/").partition("/")
        if mode == "endless":
            return self._send_forever(b"x" * 65536, 0.0)
        if mode not in ("corrupt", "truncated", "stall", "trickle"):
            return super().do_GET()
        body = self._file(rest)
        if body is None:
            return self.send_error(404)
        if mode == "corrupt":
            body = body[:10] + bytes([body[10] ^ 0xFF]) + body[11:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if mode == "corrupt":
                self.wfile.write(body)
            elif mode == "truncated":
                self.wfile.write(body[: len(body) // 2])
            elif mode == "stall":
                self.wfile.flush()
                time.sleep(3)
            else:
                self._send_forever(b"y", 0.01, headers=False)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _send_forever(self, chunk, pause, headers=True):
        if headers:
            self.send_response(200)
            self.end_headers()
        try:
            for _ in range(100000):  # bounded, so a forgotten server thread ends by itself
                self.wfile.write(chunk)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


@pytest.fixture
def http_mirror(monkeypatch):
    """Serve folders over HTTP on 127.0.0.1 from a thread; yields ``serve(folder) -> base URL``."""
    servers = []
    for var in ("no_proxy", "NO_PROXY"):  # never send local requests through a configured proxy
        monkeypatch.setenv(var, "127.0.0.1,localhost")

    def serve(folder):
        handler = functools.partial(_Handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield serve
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
