"""Fetching dataset files: sources, md5 checks, deadlines, atomic placement and safe extraction.

Where files come from, in order:

1. ``$MINIDL_DATA_MIRROR/<folder>/<original name>``, when the environment variable is set to a
   local folder or a URL base (``http://``, ``https://``, ``ftp://``, ``file://``);
2. the dataset's public mirrors (the ones torchvision uses), ``<mirror><original name>``.

Every attempt to fetch a file from one source is bounded twice: a connection may stall (connect or
one read) for at most :data:`DOWNLOAD_TIMEOUT` seconds, and the whole transfer may take at most
:data:`DOWNLOAD_DEADLINE` seconds (checked between reads, so overrun by at most one stalled read);
a source that breaks either bound is abandoned for the next. Both are module constants, read at
each call (and arguments of :func:`download_file`).

A file is written to a temporary ``.<name>.<pid>-<random>.part`` file next to its destination and
moved into place with ``os.replace`` only after its md5 matched, so a final name never holds a
partial or wrong file, and a good file already in place is never touched. Folders created for a
download that then fails are removed again. Archives are extracted member by member after checking
each one (regular files and folders only, no absolute paths, no ``..``, nothing outside the
expected top folder) into a temporary folder that is renamed into place when complete.
"""
import contextlib
import hashlib
import http.client
import os
import secrets
import shutil
import socket
import tarfile
import time
import urllib.parse
import urllib.request

MIRROR_ENV = "MINIDL_DATA_MIRROR"
"""Name of the environment variable holding a local folder or URL base tried before the public mirrors."""

DOWNLOAD_TIMEOUT = 30.0
"""Seconds a network connection may stall (connect, or one read) before the source is abandoned."""

DOWNLOAD_DEADLINE = 900.0
"""Seconds one file may take from one source in total before the source is abandoned for the next."""

_CHUNK = 1 << 20
_URL_SCHEMES = ("http", "https", "ftp", "file")


class ChecksumError(ValueError):
    """A file's md5 does not match the published one."""


class DownloadError(OSError):
    """No source could provide a file (missing everywhere, network errors, deadlines)."""


def md5sum(path):
    """Return the md5 of the file at ``path`` as a lowercase hex string (read in 1 MiB chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_url(location):
    """True when ``location`` is a URL minidl can fetch (http, https, ftp or file), not a path."""
    return urllib.parse.urlsplit(location).scheme.lower() in _URL_SCHEMES


def join(base, name):
    """Join a folder path or a URL base with one more path component."""
    if is_url(base):
        return base.rstrip("/") + "/" + name
    return os.path.join(os.path.expanduser(base), name)


def mirror_base():
    """Return ``$MINIDL_DATA_MIRROR`` (stripped; read at every call), or None when unset or blank."""
    return os.environ.get(MIRROR_ENV, "").strip() or None


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
    env = mirror_base()
    if env:
        sources.append(join(join(env, folder), name))
    sources.extend(join(m, name) for m in mirrors)
    return sources


def fix_hint(folder, what, dest_dir):
    """The sentence that ends every "could not get the files" error: the one thing to do.

    Args:
        folder (str): the dataset's folder under the mirror, e.g. ``"mnist"``.
        what (str): what is missing, e.g. a file name.
        dest_dir (str): where it could be put by hand, ``<root>/<folder>``.
    Returns:
        str: ``"To fix: set MINIDL_DATA_MIRROR to a folder or URL holding <folder>/<what>, or put
        <what> in <dest_dir>/."``
    """
    return (f"To fix: set {MIRROR_ENV} to a folder or URL holding {folder}/{what}, "
            f"or put {what} in {os.path.join(dest_dir, '')}.")


# --------------------------------------------------------------------------------------------
# Copying one source into an open file, with a per-read timeout and a total deadline
# --------------------------------------------------------------------------------------------


def _describe(exc):
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"


class _DeadlinePassed(TimeoutError):
    """The total time allowed for one transfer is over."""


def _copy_stream(src, dst, digest, deadline, progress=None):
    """Copy ``src`` to ``dst`` until EOF; raise _DeadlinePassed once ``time.monotonic()`` > ``deadline``."""
    # read1 returns what has arrived (at most one read on the socket), so a server that trickles
    # bytes cannot keep us inside one large read past the deadline.
    read = getattr(src, "read1", src.read)
    copied = 0
    while True:
        if time.monotonic() > deadline:
            raise _DeadlinePassed(f"after {copied} bytes")
        chunk = read(_CHUNK)
        if not chunk:
            return copied
        dst.write(chunk)
        digest.update(chunk)
        copied += len(chunk)
        if progress is not None:
            progress(len(chunk))


def fetch(source, dst, label, timeout=None, deadline=None):
    """Copy ``source`` (a path or URL) into the open binary file ``dst``; return its md5 (hex).

    Args:
        source (str): a local path or an http/https/ftp/file URL.
        dst (file): open for binary writing.
        label (str): name shown on the progress bar (a terminal only, silent in logs and CI).
        timeout (float, optional): seconds a connection may stall; default :data:`DOWNLOAD_TIMEOUT`.
        deadline (float, optional): seconds the whole copy may take; default :data:`DOWNLOAD_DEADLINE`.
    Raises:
        OSError: the source is missing or unreachable, a stall (``TimeoutError``), the deadline
            passed (``TimeoutError``), or a transfer shorter than its announced length.
        http.client.HTTPException, ValueError: a broken HTTP response or URL.
    """
    timeout = DOWNLOAD_TIMEOUT if timeout is None else float(timeout)
    deadline = DOWNLOAD_DEADLINE if deadline is None else float(deadline)
    stop = time.monotonic() + deadline
    digest = hashlib.md5(usedforsecurity=False)
    try:
        if not is_url(source):
            with open(source, "rb") as src:
                _copy_stream(src, dst, digest, stop)
            return digest.hexdigest()
        from tqdm.auto import tqdm

        request = urllib.request.Request(source, headers={"User-Agent": "minidl"})
        with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            # disable=None: the bar is shown on a terminal and stays silent in logs and CI.
            with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                      disable=None, leave=False) as bar:
                copied = _copy_stream(response, dst, digest, stop, bar.update)
            if total is not None and copied != total:
                raise OSError(f"truncated transfer: received {copied} of {total} bytes")
    except _DeadlinePassed as exc:
        raise TimeoutError(f"abandoned: the {deadline:g} s deadline for one download passed ({exc})") from None
    except (TimeoutError, socket.timeout) as exc:  # one connect or read stalled
        raise TimeoutError(f"abandoned: stalled for more than {timeout:g} s ({_describe(exc)})") from None
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Folders created for a download, removed again when it fails
# --------------------------------------------------------------------------------------------


def make_dirs(path):
    """Create ``path`` and missing parents; return the folders created, deepest first."""
    created = []
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        created.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(created):
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
    return created


def remove_empty_dirs(folders):
    """Remove each folder of ``folders`` (deepest first) that is empty; leave the others alone."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty (or gone): its parents are not empty either


def _temp_name(dest_dir, name, suffix):
    return os.path.join(dest_dir, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


# --------------------------------------------------------------------------------------------
# One verified file
# --------------------------------------------------------------------------------------------


def fetch_verified(name, md5, sources, dest_dir, timeout=None, deadline=None):
    """Try ``sources`` in order until one delivers ``name`` with the right md5; place it atomically.

    The folder ``dest_dir`` must exist. Each source is copied to a fresh temporary ``.part`` file
    in ``dest_dir`` (flushed and fsynced); a copy with the right md5 is moved to
    ``dest_dir/name`` with ``os.replace``, any other copy is deleted.

    Returns:
        tuple: ``(path or None, attempts, wrong_md5)``: the verified path (None when every source
        failed), one line per failed source saying what went wrong, and whether some source
        delivered a file with another md5.
    """
    final = os.path.join(dest_dir, name)
    attempts, wrong_md5 = [], False
    for source in sources:
        tmp = _temp_name(dest_dir, name, ".part")
        try:
            # O_EXCL: a fresh name of our own; mode 0o666 so the umask decides, as for any new file.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as out:
                received = fetch(source, out, name, timeout, deadline)
                out.flush()
                os.fsync(out.fileno())
            if received == md5:
                os.replace(tmp, final)
                return final, attempts, wrong_md5
            wrong_md5 = True
            attempts.append(f"{source}: received md5 {received}, expected {md5}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            attempts.append(f"{source}: {_describe(exc)}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return None, attempts, wrong_md5


def download_file(name, md5, sources, dest_dir, hint=None, timeout=None, deadline=None):
    """Fetch one file into ``dest_dir`` from the first source whose copy has the right md5.

    A file already at ``dest_dir/name`` with the right md5 is used as it is. Otherwise each source
    (a local path or a URL) is copied to a temporary ``.part`` file in ``dest_dir``; only a copy
    whose md5 equals ``md5`` is moved to ``dest_dir/name`` (``os.replace``). Failed attempts leave
    nothing behind, and folders created for a download that fails are removed again.

    Args:
        name (str): the final file name.
        md5 (str): the expected md5, hex.
        sources (sequence of str): full locations of the file, tried in order.
        dest_dir (str or PathLike): the destination folder (created if needed).
        hint (str, optional): the last sentence of the error, saying what to do; default
            :func:`fix_hint` for the folder ``basename(dest_dir)``.
        timeout (float, optional): per-read stall limit; default :data:`DOWNLOAD_TIMEOUT`.
        deadline (float, optional): total seconds per source; default :data:`DOWNLOAD_DEADLINE`.
    Returns:
        str: the path of the verified file.
    Raises:
        ChecksumError: at least one source delivered the file but none with the right md5; the
            message names the file, the expected and received md5s and every source tried.
        DownloadError: no source could deliver the file (or there were no sources).
    """
    dest_dir = os.fspath(dest_dir)
    final = os.path.join(dest_dir, name)
    if hint is None:
        hint = fix_hint(os.path.basename(os.path.normpath(dest_dir)), name, dest_dir)
    if os.path.isfile(final) and md5sum(final) == md5:
        return final
    if not sources:
        raise DownloadError(f"{name}: no source to fetch it from. {hint}")
    created = make_dirs(dest_dir)
    path, attempts, wrong_md5 = fetch_verified(name, md5, sources, dest_dir, timeout, deadline)
    if path is not None:
        return path
    remove_empty_dirs(created)
    tried = "\n".join("  " + a for a in attempts)
    if wrong_md5:
        raise ChecksumError(f"{name}: md5 mismatch, expected {md5}; no source delivered a good copy. "
                            f"Sources tried:\n{tried}\n{hint}")
    raise DownloadError(f"{name}: could not be fetched from any source. Sources tried:\n{tried}\n{hint}")


def fetch_into(source, path, timeout=None, deadline=None):
    """Copy ``source`` (a path or URL) to the new file ``path`` (which must not exist); return its md5.

    For files without a published md5 (an extracted dataset folder on a mirror); the caller
    checks the content. The file is flushed and fsynced; on error it is removed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            received = fetch(source, out, os.path.basename(path), timeout, deadline)
            out.flush()
            os.fsync(out.fileno())
        return received
    except BaseException:
        os.remove(path)
        raise


# --------------------------------------------------------------------------------------------
# Safe extraction of a tar archive
# --------------------------------------------------------------------------------------------


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder or is not a plain file/folder."""


def _check_member(archive, member, top):
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if (name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts
            or (len(parts[0]) == 2 and parts[0][1] == ":")):
        raise UnsafeArchiveError(f"{archive}: refused to extract {name!r}: the path leaves the extraction folder")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise UnsafeArchiveError(f"{archive}: refused to extract {name!r}: a {kind}; only regular files "
                                 f"and folders are extracted")
    clean = [p for p in parts if p not in ("", ".")]
    if not clean or clean[0] != top or (member.isfile() and len(clean) < 2):
        raise UnsafeArchiveError(f"{archive}: refused to extract {name!r}: everything must lie in {top}/")
    return "/".join(clean)


@contextlib.contextmanager
def temp_folder(dest_dir, name):
    """Create a fresh hidden folder in ``dest_dir`` for building ``name``; remove it on exit."""
    tmp = _temp_name(dest_dir, name, ".tmp")
    os.mkdir(tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_folder_into_place(folder, final):
    """Rename the complete ``folder`` to ``final``; when ``final`` appeared meanwhile, keep that one."""
    try:
        os.rename(folder, final)
    except OSError:
        if not os.path.isdir(final):
            raise
    return final


def extract_tar(archive, dest_dir, top, check=None):
    """Extract the tar archive ``archive`` (any compression) as ``dest_dir/top``, safely and atomically.

    Every member is checked before anything is written: it must be a regular file or a folder
    whose path lies inside ``top/`` (no absolute path, no ``..``, no link, no device). The
    members go into a temporary folder in ``dest_dir``, and ``top`` is renamed into place only
    when all of them are written, so ``dest_dir/top`` never holds a partial extraction. When
    ``dest_dir/top`` appears meanwhile (another process), that one is kept.

    Args:
        archive (str or PathLike): the archive.
        dest_dir (str or PathLike): the folder that receives ``top``.
        top (str): the one top-level folder the archive must hold.
        check (callable, optional): called with the path of the extracted (still temporary)
            ``top`` folder before it is renamed into place; an exception it raises aborts the
            extraction (nothing is left behind) and propagates.
    Returns:
        str: the path ``dest_dir/top``.
    Raises:
        UnsafeArchiveError: a member that is not a plain file/folder or lies outside ``top/``.
        tarfile.TarError, OSError: an unreadable archive or a write error (nothing is left behind).
    """
    archive, dest_dir = os.fspath(archive), os.fspath(dest_dir)
    with temp_folder(dest_dir, top) as tmp, tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        paths = [_check_member(archive, m, top) for m in members]
        for member, path in zip(members, paths):
            target = os.path.join(tmp, *path.split("/"))
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as src, open(target, "xb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
        extracted = os.path.join(tmp, top)
        os.makedirs(extracted, exist_ok=True)
        if check is not None:
            check(extracted)
        return move_folder_into_place(extracted, os.path.join(dest_dir, top))
