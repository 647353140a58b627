"""Stores: list, read and write files in a folder, a folder inside a zip, or an fsspec URL.

A :class:`Store` is "a place that holds files". Three kinds share one interface:

* a plain folder (``data/train``) or a ``file://`` URL: pathlib, atomic temp + rename writes
  (:mod:`hpasc.io.atomic`);
* a folder inside a zip archive (``data/x.zip/sub/dir``, ``zip://sub/dir::file:///abs/x.zip``,
  ``zip::memory://b/x.zip``, ``s3://b/x.zip/sub``): read through fsspec's ``ZipFileSystem``,
  one per archive and process. Local archives are writable: writes go to a temporary archive
  beside the target that replaces it on :meth:`Store.close`, so a crash leaves the old archive
  intact; archives behind other URLs are read-only;
* any other fsspec URL (``memory://bucket/x``, ``s3://...`` when the backend is installed).

Names are relative, ``/``-separated paths below the store root. Names that could escape the
root (``..`` parts, absolute paths, drive letters) are refused on read and write (zip-slip).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import threading
import time
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

import fsspec
from fsspec.implementations.zip import ZipFileSystem

from hpasc.errors import InputError, OutputError, oserror_to_output_error
from hpasc.io.atomic import (
    AtomicFile,
    atomic_open,
    atomic_write,
    fs_writer,
    is_tmp,
    remove_dead_temporaries,
    spooled_writer,
    tmp_sibling,
)

__all__ = ["Store", "open_store", "clean_name", "STORED_EXTS"]

#: Entries with these endings are already compressed: zip stores them without deflate.
STORED_EXTS = (".png", ".npz", ".crops", ".zip", ".gz", ".jpg", ".jpeg", ".parquet")

#: How an output set was made (hpasc.runner.guard_output); bookkeeping, not listed.
MANIFEST_NAME = ".hpasc-output.json"
_DRIVE = re.compile(r"^[A-Za-z]:")
# Fixed entry timestamp: the same content gives the same archive bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_COPY_CHUNK = 1 << 20


def clean_name(name: str | os.PathLike) -> str:
    """Return ``name`` as a normalised relative ``/`` path, refusing names that escape the root.

    Backslashes count as separators; ``.`` parts and repeated separators are dropped.

    Raises
    ------
    InputError
        For an empty name, an absolute path (``/x``, ``\\x``), a drive letter (``C:``) or a
        ``..`` part (zip-slip).
    """
    raw = os.fspath(name)
    if not isinstance(raw, str):
        raise ValueError(f"file names must be str, got {raw!r}")
    unsafe = InputError(
        f"unsafe file name {raw!r}: absolute paths, drive letters and '..' parts are refused "
        "so nothing is read or written outside the store; use a name relative to the store"
    )
    if raw.startswith(("/", "\\")) or _DRIVE.match(raw) or "\x00" in raw:
        raise unsafe
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." or _DRIVE.match(p) for p in parts):
        raise unsafe
    if not parts:
        raise InputError(f"empty file name {raw!r}: give a file name relative to the store")
    return "/".join(parts)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


# --------------------------------------------------------------------------------------------
# Backends. Paths given to a backend are clean names relative to the backend root; a missing
# file raises FileNotFoundError, which Store turns into an InputError naming the location.


class _FolderBackend:
    kind = "folder"

    def __init__(self, root: Path):
        self.root = root

    def location(self, path: str) -> str:
        return str(self.root / path) if path else str(self.root)

    def root_exists(self, prefix: str) -> bool:
        return (self.root / prefix).is_dir()

    def list(self, prefix: str, recursive: bool) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        if not recursive:
            with os.scandir(base) as it:
                return [e.name for e in it if e.is_file() and not is_tmp(e.name)]
        out = []
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(base).as_posix()
            out.extend(_join("" if rel == "." else rel, f) for f in files if not is_tmp(f))
        return out

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()

    def read_bytes(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except (IsADirectoryError, NotADirectoryError) as e:
            raise FileNotFoundError(path) from e

    def open_read(self, path: str) -> IO[bytes]:
        try:
            return open(self.root / path, "rb")  # noqa: SIM115 - the caller closes it
        except (IsADirectoryError, NotADirectoryError) as e:
            raise FileNotFoundError(path) from e

    def open_write(self, path: str) -> AtomicFile:
        return atomic_open(self.root / path)

    def write_bytes(self, path: str, data: bytes) -> None:
        atomic_write(self.root / path, data)

    def remove(self, path: str) -> None:
        try:
            (self.root / path).unlink()
        except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
            if not (self.root / path).is_file():
                raise FileNotFoundError(path) from e
            raise

    def local_path(self, path: str) -> Path | None:
        return self.root / path

    def commit(self) -> None:
        """Folder writes are committed one file at a time."""

    def abort(self) -> None:
        """Nothing is pending in a folder."""


class _FsspecBackend:
    kind = "fsspec"

    def __init__(self, fs: Any, root: str, url: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")

    def _full(self, path: str) -> str:
        return _join(self.root, path) if self.root else path

    def location(self, path: str) -> str:
        return _join(self.url, path)

    @contextlib.contextmanager
    def _reaching(self, path: str):
        """Connection failures (refused, unreachable, timed out) as one InputError naming the URL."""
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise
        except OSError as e:
            raise InputError(
                f"{self.location(path)}: cannot reach it ({e}); check the URL and the network"
            ) from None

    def root_exists(self, prefix: str) -> bool:
        with self._reaching(prefix):
            return self.fs.isdir(self._full(prefix))

    def list(self, prefix: str, recursive: bool) -> list[str]:
        base = self._full(prefix)
        with self._reaching(prefix):
            if not self.fs.isdir(base):
                return []
            if recursive:
                paths = self.fs.find(base)
            else:
                paths = [e["name"] for e in self.fs.ls(base, detail=True) if e["type"] == "file"]
        cut = len(base.rstrip("/")) + 1
        return [p[cut:] for p in paths if not is_tmp(p)]

    def exists(self, path: str) -> bool:
        with self._reaching(path):
            return self.fs.isfile(self._full(path))

    def read_bytes(self, path: str) -> bytes:
        with self._reaching(path):
            return self.fs.cat_file(self._full(path))

    def open_read(self, path: str) -> IO[bytes]:
        with self._reaching(path):
            return self.fs.open(self._full(path), "rb")

    def write_bytes(self, path: str, data: bytes) -> None:
        # Object stores and memory:// publish an object only once it is fully uploaded.
        self.fs.pipe_file(self._full(path), bytes(data))

    def open_write(self, path: str) -> AtomicFile:
        return fs_writer(self.fs, self._full(path), self.location(path))

    def remove(self, path: str) -> None:
        if not self.exists(path):
            raise FileNotFoundError(path)
        self.fs.rm_file(self._full(path))

    def local_path(self, path: str) -> Path | None:
        return None

    def commit(self) -> None:
        """fsspec writes are committed one file at a time."""

    def abort(self) -> None:
        """Nothing is pending."""


# --- zip ------------------------------------------------------------------------------------

# Read-only ZipFileSystems, one per archive and per process: a forked worker must not share
# the parent's file offset, so the whole cache is dropped when the process id changes. A local
# archive replaced on disk (new inode/size/mtime) is reopened; a remote one is taken as fixed.
_READERS: dict[str, tuple[tuple[int, int, int] | None, ZipFileSystem]] = {}
_READERS_PID = os.getpid()
_READERS_LOCK = threading.Lock()


def _zip_reader(archive: str, local: Path | None) -> ZipFileSystem | None:
    """The cached ZipFileSystem of ``archive`` (a local path or fsspec URL); None: missing."""
    global _READERS_PID
    sig = None
    if local is not None:
        try:
            st = os.stat(local)
        except FileNotFoundError:
            return None
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _READERS_LOCK:
        if os.getpid() != _READERS_PID:
            _READERS.clear()
            _READERS_PID = os.getpid()
        hit = _READERS.get(archive)
        if hit is not None and hit[0] == sig:
            return hit[1]
        try:
            # A local archive is handed over open: fsspec's LocalFileOpener wrapper would add
            # a layer to every seek and read of every member.
            fs = ZipFileSystem(open(local, "rb") if local is not None else archive)  # noqa: SIM115
        except FileNotFoundError:
            return None
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(
                f"{archive} is not a readable zip archive ({e}); check the file or recreate it"
            ) from None
        _READERS[archive] = (sig, fs)
        return fs


def _copy_entry(zin: zipfile.ZipFile, info: zipfile.ZipInfo, zout: zipfile.ZipFile) -> None:
    new = zipfile.ZipInfo(info.filename, info.date_time)
    new.compress_type = info.compress_type
    new.external_attr = info.external_attr
    new.comment = info.comment
    new.file_size = info.file_size  # lets zipfile decide on zip64 up front
    with zin.open(info) as src, zout.open(new, "w") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


class _ZipTransaction:
    """Pending writes to one archive: a temporary zip beside it plus what was removed.

    ``target`` is None for an archive behind a remote URL, which is read-only.
    """

    def __init__(self, target: Path | None, archive: str):
        self.target = target
        self.archive = archive
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.tmp: Path | None = None
        self.writer: zipfile.ZipFile | None = None
        self.written: dict[str, int] = {}  # name -> copies in the temp zip
        self.removed: set[str] = set()
        self.parent_pending: set[str] = set()  # pending in the process we were forked from
        self.commit_every: float | None = None  # seconds between automatic commits (None: never)
        self.started = 0.0  # when the pending writes began
        self.commit_seconds = 0.0  # how long the last commit took

    def reset(self) -> None:
        self.tmp = None
        self.writer = None
        self.written = {}
        self.removed = set()

    def ensure_writer(self) -> zipfile.ZipFile:
        if self.target is None:
            raise OutputError(
                f"{self.archive}: zip archives behind URLs are read-only; write a local archive "
                "(data/x.zip) and upload it"
            )
        if self.pid != os.getpid():
            raise OutputError(
                f"{self.target}: this zip store is being written by process {self.pid}; "
                "write a zip archive from one process only (give each worker its own archive)"
            )
        if self.writer is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_dead_temporaries(self.target.parent, self.target.name)
            self.started = time.monotonic()
            self.tmp = tmp_sibling(self.target)
            self.writer = zipfile.ZipFile(self.tmp, "x", zipfile.ZIP_DEFLATED)
        return self.writer

    def commit(self) -> None:
        with self.lock:
            if self.pid != os.getpid() or self.writer is None:
                return
            writer, tmp = self.writer, self.tmp
            began = time.monotonic()
            try:
                old = _zip_reader(self.archive, self.target)
                if old is not None:
                    for info in old.zip.infolist():
                        name = info.filename
                        if name not in self.written and name not in self.removed:
                            _copy_entry(old.zip, info, writer)
                writer.close()
                dead = any(n > 1 for n in self.written.values()) or bool(
                    self.removed.intersection(self.written)
                )
                final = self._compact(tmp) if dead else tmp
                fd = os.open(final, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if self.target.exists():
                    os.chmod(final, self.target.stat().st_mode & 0o7777)
                os.replace(final, self.target)
                self.commit_seconds = time.monotonic() - began
            except BaseException:
                self.abort()
                raise
            self.reset()

    def _compact(self, tmp: Path) -> Path:
        """Rewrite the temp zip keeping the last copy of each live entry."""
        out = tmp_sibling(self.target)
        with zipfile.ZipFile(tmp) as zin, zipfile.ZipFile(out, "x") as zout:
            infos = zin.infolist()
            last = {info.filename: i for i, info in enumerate(infos)}
            for i, info in enumerate(infos):
                if last[info.filename] == i and info.filename not in self.removed:
                    _copy_entry(zin, info, zout)
        tmp.unlink()
        return out

    def abort(self) -> None:
        with self.lock:
            if self.pid != os.getpid():
                return
            if self.writer is not None:
                with contextlib.suppress(Exception):  # the temp is deleted anyway
                    self.writer.close()
            if self.tmp is not None:
                self.tmp.unlink(missing_ok=True)
            self.reset()

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's temp zip without touching it."""
        if self.writer is not None:
            # ZipFile.close()/__del__ would append a central directory to the parent's temp
            # file through the shared descriptor; detach it so closing does nothing.
            self.writer.fp = None
        self.parent_pending = set(self.written) | self.removed
        self.reset()


def _commit_quietly(txn: _ZipTransaction) -> None:
    try:
        txn.commit()
    except Exception as e:  # at interpreter exit there is nobody left to raise to
        warnings.warn(f"could not commit zip store {txn.target}: {e}", stacklevel=1)


_LIVE_TRANSACTIONS: weakref.WeakSet[_ZipTransaction] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for txn in list(_LIVE_TRANSACTIONS):
        txn.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _ZipBackend:
    kind = "zip"

    def __init__(self, archive: str, local: Path | None):
        self.archive = archive  # a local path or an fsspec URL
        self.local = local  # None: behind a URL, read-only
        self.txn = _ZipTransaction(local, archive)
        _LIVE_TRANSACTIONS.add(self.txn)
        # Safety net: pending writes are committed when the last Store on this archive is
        # garbage-collected or the interpreter exits normally (not on a crash or os._exit).
        self._finalizer = weakref.finalize(self, _commit_quietly, self.txn)

    def location(self, path: str) -> str:
        return _join(self.archive, path)

    def _check_parent(self, path: str) -> None:
        if path in self.txn.parent_pending:
            raise InputError(
                f"{self.location(path)} was written by the parent process but not committed; "
                "call store.close() before starting worker processes"
            )

    def _reader(self) -> ZipFileSystem | None:
        return _zip_reader(self.archive, self.local)

    def _names(self) -> list[str]:
        with self.txn.lock:
            reader = self._reader()
            # Raw entry names (so unsafe ones can be refused), from the ZipFileSystem's ZipFile:
            # its find() costs 50x namelist() per entry (bench_store.py).
            old = reader.zip.namelist() if reader is not None else []
            names = set(old) | set(self.txn.written)
            return [n for n in names if n not in self.txn.removed and not n.endswith("/")]

    def root_exists(self, prefix: str) -> bool:
        names = self._names()
        return bool(names) and (not prefix or any(n.startswith(prefix + "/") for n in names))

    def list(self, prefix: str, recursive: bool) -> list[str]:
        out, unsafe = [], 0
        start = prefix + "/" if prefix else ""
        for name in self._names():
            if not name.startswith(start):
                continue
            try:
                ok = clean_name(name) == name
            except InputError:
                ok = False
            rel = name[len(start) :]
            if not ok:
                unsafe += 1
            elif recursive or "/" not in rel:
                out.append(rel)
        if unsafe:
            warnings.warn(
                f"{self.archive}: skipped {unsafe} entries with unsafe names (zip-slip)",
                stacklevel=3,
            )
        return out

    def _source(self, path: str) -> zipfile.ZipFile | None:
        """The pending temp zip or the archive holding ``path`` (None: missing)."""
        txn = self.txn
        self._check_parent(path)
        if path in txn.removed:
            return None
        if path in txn.written:
            return txn.writer
        reader = self._reader()
        # Members are read from the ZipFileSystem's own ZipFile: its open() re-parses the path
        # and calls info() every time, 5x the cost of reading a small member (bench_store.py).
        zf = reader.zip if reader is not None else None
        return zf if zf is not None and path in zf.NameToInfo else None

    def exists(self, path: str) -> bool:
        with self.txn.lock:
            return self._source(path) is not None

    def open_read(self, path: str) -> IO[bytes]:
        with self.txn.lock:
            src = self._source(path)
            if src is None:
                raise FileNotFoundError(path)
            return src.open(path)

    def read_bytes(self, path: str) -> bytes:
        with self.txn.lock:
            src = self._source(path)
            if src is None:
                raise FileNotFoundError(path)
            return src.read(path)

    def _info(self, path: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(path, _ZIP_DATE)
        stored = path.lower().endswith(STORED_EXTS)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        return info

    def _added(self, path: str) -> None:
        txn = self.txn
        txn.removed.discard(path)
        txn.written[path] = txn.written.get(path, 0) + 1
        txn.parent_pending.discard(path)
        # Flush so a forked child never inherits buffered bytes it could write out.
        txn.writer.fp.flush()
        if txn.commit_every is not None:
            # Commit (copying the archive) at most every commit_every seconds and never more
            # than a fifth of the time, so that a killed run keeps what it finished; 0: after
            # every write.
            wait = txn.commit_every and max(txn.commit_every, 4 * txn.commit_seconds)
            if time.monotonic() - txn.started >= wait:
                txn.commit()

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.txn.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": compacted on commit
            self.txn.ensure_writer().writestr(self._info(path), bytes(data))
            self._added(path)

    def open_write(self, path: str) -> AtomicFile:
        def commit(buf: IO[bytes]) -> None:
            info = self._info(path)
            info.file_size = buf.seek(0, os.SEEK_END)
            buf.seek(0)
            with self.txn.lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                with self.txn.ensure_writer().open(info, "w") as dst:
                    shutil.copyfileobj(buf, dst, _COPY_CHUNK)
                self._added(path)

        return spooled_writer(commit, self.location(path))

    def remove(self, path: str) -> None:
        with self.txn.lock:
            if self._source(path) is None:
                raise FileNotFoundError(path)
            self.txn.ensure_writer()
            self.txn.removed.add(path)

    def local_path(self, path: str) -> Path | None:
        return None

    def commit(self) -> None:
        self.txn.commit()

    def abort(self) -> None:
        self.txn.abort()


# One backend per archive and process, so every Store on one zip shares one transaction.
_ZIP_BACKENDS: weakref.WeakValueDictionary[str, _ZipBackend] = weakref.WeakValueDictionary()
_ZIP_BACKENDS_LOCK = threading.Lock()


def _zip_backend(archive: str, local: Path | None, inner: str) -> tuple[_ZipBackend, str]:
    """The shared backend of ``archive`` and the clean prefix ``inner`` inside it."""
    key = os.path.abspath(local) if local is not None else archive
    with _ZIP_BACKENDS_LOCK:
        backend = _ZIP_BACKENDS.get(key)
        if backend is None or backend.txn.pid != os.getpid():
            backend = _ZipBackend(key, Path(key) if local is not None else None)
            _ZIP_BACKENDS[key] = backend
    return backend, clean_name(inner) if inner.strip("/") else ""


def _file_url_to_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise InputError(f"{url}: file:// URLs must name a local path (file:///abs/path)")
    return unquote(parsed.path)


def _zip_part(url: str, parts: list[str], is_dir: Callable[[int], bool]) -> int | None:
    """Index of the part of ``parts`` that is a zip archive (None: no archive)."""
    zips = [i for i, p in enumerate(parts) if p.lower().endswith(".zip") and not is_dir(i)]
    if len(zips) > 1:
        names = ", ".join(parts[i] for i in zips)
        raise InputError(
            f"{url}: more than one .zip in the path ({names}); an archive inside an archive "
            "cannot be opened in place: extract the inner archive first"
        )
    return zips[0] if zips else None


def _chained_zip(url: str) -> tuple[_ZipBackend, str]:
    """``zip::TARGET`` or ``zip://inner/dir::TARGET``, TARGET a path or an fsspec URL."""
    head, _, target = url.partition("::")
    if not target or "::" in target:
        raise InputError(
            f"{url}: a chained zip URL is zip://INNER/DIR::ARCHIVE with one archive URL after "
            "'::' (e.g. zip://images::file:///data/train.zip)"
        )
    inner = head.split("://", 1)[1] if "://" in head else ""
    if "://" not in target or target.lower().startswith("file://"):
        local = target if "://" not in target else _file_url_to_path(target)
        return _zip_backend(local, Path(local).expanduser(), inner)
    return _zip_backend(target, None, inner)


def _open_backend(url: str) -> tuple[Any, str]:
    """Return (backend, prefix inside it) for a store location."""
    if url.lower().startswith(("zip::", "zip://")):
        return _chained_zip(url)
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme.lower() == "file":
            return _local_backend(_file_url_to_path(url), url)
        parts = rest.split("/")
        i = _zip_part(url, parts, lambda i: False)  # listing remote folders costs a request
        if i is not None:
            archive = f"{scheme}://" + "/".join(parts[: i + 1])
            return _zip_backend(archive, None, "/".join(parts[i + 1 :]))
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise InputError(
                f"cannot open store {url!r}: {e}; install the fsspec backend for {scheme}://"
            ) from None
        return _FsspecBackend(fs, root, url), ""
    return _local_backend(url, url)


def _local_backend(path_str: str, url: str) -> tuple[Any, str]:
    path = Path(path_str).expanduser()
    parts = path.parts
    i = _zip_part(url, list(parts), lambda i: Path(*parts[: i + 1]).is_dir())
    if i is None:
        return _FolderBackend(path), ""
    archive = Path(*parts[: i + 1])
    return _zip_backend(str(archive), archive, "/".join(parts[i + 1 :]))


class Store:
    """A folder, a folder inside a zip (``data/x.zip`` or ``data/x.zip/sub/dir``), or any fsspec
    URL (``memory://bucket/x``, ``file:///abs``, remote ones when installed).

    Parameters
    ----------
    url
        Where the files are. Nothing is created until the first write.

    Notes
    -----
    Zip writes are collected in a temporary archive beside the target and moved into place by
    :meth:`close` (or leaving a ``with`` block normally); leaving it by an exception discards
    them. All Store objects on one archive in one process share the pending writes. Write a
    given archive from one process at a time; any number of processes may read it.

    Examples
    --------
    >>> with Store("memory://doc/example") as s:
    ...     s.write_bytes("a/b.txt", b"hi")
    ...     s.list(recursive=True)
    ['a/b.txt']
    """

    url: str

    def __init__(self, url: str | os.PathLike):
        url = os.fspath(url)
        if not isinstance(url, str) or not url:
            raise InputError(f"empty or invalid store location {url!r}: give a folder, zip or URL")
        self.url = url
        self._backend, self._prefix = _open_backend(url)

    @classmethod
    def _view(cls, url: str, backend: Any, prefix: str) -> Store:
        store = cls.__new__(cls)
        store.url, store._backend, store._prefix = url, backend, prefix
        return store

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self):
        # Workers (spawned or forked) reopen the store from its location.
        return (Store, (self.url,))

    @property
    def kind(self) -> str:
        """``"folder"``, ``"zip"`` or ``"fsspec"``."""
        return self._backend.kind

    def _path(self, name: str | os.PathLike) -> str:
        return _join(self._prefix, clean_name(name))

    def _missing(self, name: str | os.PathLike, path: str) -> InputError:
        return InputError(
            f"file not found: {self._backend.location(path)} (name {os.fspath(name)!r} in store "
            f"{self.url!r}); check the name and the store location (Store.list() shows its files)"
        )

    def location(self, name: str | os.PathLike) -> str:
        """Human-readable full location of ``name`` (for messages)."""
        return self._backend.location(self._path(name))

    def root_exists(self) -> bool:
        """Whether the store's folder (or the zip, or the folder inside it) exists."""
        return self._backend.root_exists(self._prefix)

    def list(self, pattern: str | None = None, recursive: bool = False) -> list[str]:
        """Sorted relative names of the files in the store (not folders).

        Parameters
        ----------
        pattern
            ``fnmatch`` glob on the relative name, e.g. ``"*_red.*"`` (case-sensitive; with
            ``recursive`` a ``*`` also matches ``/``).
        recursive
            Include files in sub-folders (names like ``sub/x.png``).

        A store that does not exist yet lists as empty. The output manifest
        (:data:`MANIFEST_NAME`) is bookkeeping and not listed.
        """
        names = [n for n in self._backend.list(self._prefix, recursive) if n != MANIFEST_NAME]
        if pattern is not None:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return sorted(names)

    def exists(self, name: str | os.PathLike) -> bool:
        """Whether a file ``name`` exists."""
        return self._backend.exists(self._path(name))

    def read_bytes(self, name: str | os.PathLike) -> bytes:
        """The content of file ``name``; InputError naming the location if it is missing."""
        path = self._path(name)
        try:
            return self._backend.read_bytes(path)
        except FileNotFoundError:
            raise self._missing(name, path) from None

    def write_bytes(self, name: str | os.PathLike, data: bytes) -> None:
        """Write file ``name`` atomically, replacing any previous version."""
        path = self._path(name)
        try:
            self._backend.write_bytes(path, data)
        except OSError as e:
            raise oserror_to_output_error(e, self._backend.location(path)) from None

    def open(self, name: str | os.PathLike, mode: str = "rb") -> IO[bytes]:
        """Open file ``name`` for streaming: ``"rb"`` to read, ``"wb"`` to write.

        A write stream becomes visible under ``name`` only when closed; leaving a ``with``
        block by an exception discards it.
        """
        path = self._path(name)
        if mode == "rb":
            try:
                return self._backend.open_read(path)
            except FileNotFoundError:
                raise self._missing(name, path) from None
        if mode == "wb":
            try:
                return self._backend.open_write(path)
            except OSError as e:
                raise oserror_to_output_error(e, self._backend.location(path)) from None
        raise ValueError(f"mode must be 'rb' or 'wb', got {mode!r}")

    def sub(self, name: str | os.PathLike) -> Store:
        """The sub-folder ``name`` as a Store of the same kind (sharing pending zip writes)."""
        path = self._path(name)
        head, chained, archive = self.url.partition("::")
        if chained and head.lower().startswith("zip"):  # the folder goes before the archive
            return Store._view(f"zip://{path}::{archive}", self._backend, path)
        return Store._view(_join(self.url.rstrip("/"), clean_name(name)), self._backend, path)

    def local_path(self, name: str | os.PathLike) -> Path | None:
        """The real file path of ``name`` for a plain-folder store (existing or not), else None."""
        return self._backend.local_path(self._path(name))

    def remove(self, name: str | os.PathLike) -> None:
        """Delete file ``name``; InputError if it is missing."""
        path = self._path(name)
        try:
            self._backend.remove(path)
        except FileNotFoundError:
            raise self._missing(name, path) from None

    def close(self) -> None:
        """Commit pending zip writes (the archive is replaced in one rename).

        The store stays usable; later writes start a new pending set. No-op for folders/URLs.
        """
        try:
            self._backend.commit()
        except OSError as e:  # e.g. the disk fills while the archive is finalised
            raise oserror_to_output_error(e, self.url) from None

    def abort(self) -> None:
        """Discard pending zip writes, leaving the archive as it was. No-op for folders/URLs."""
        self._backend.abort()

    def commit_every(self, seconds: float | None) -> None:
        """Commit pending zip writes automatically every ``seconds`` (None: only on close).

        For outputs that resume: a killed run then keeps what it wrote before the last commit.
        No-op for folders/URLs (their writes are committed one file at a time).
        """
        txn = getattr(self._backend, "txn", None)
        if txn is not None:
            txn.commit_every = seconds

    def remove_dead_temporaries(self) -> int:
        """Delete temp files left by killed writers of this store (a local folder or zip).

        Returns how many were removed; files of live writers are kept.
        """
        archive = getattr(self._backend, "local", None)
        if archive is not None:
            return remove_dead_temporaries(archive.parent, archive.name)
        if self.kind != "folder":
            return 0
        return remove_dead_temporaries(self._backend.root / self._prefix)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_store(url: str | os.PathLike | Store) -> Store:
    """``Store(url)``, or ``url`` itself when it already is a Store."""
    return url if isinstance(url, Store) else Store(url)


@contextlib.contextmanager
def open_output(url: str | os.PathLike | Store) -> Iterator[Store]:
    """The output store of a per-field run, committed when the block ends.

    Zip writes are committed also when the block ends by an error or Ctrl-C: every file in them
    is complete, and keeping them is what makes a resume work. An output that this run created
    and in which it finished nothing is discarded instead: a run that fails on its first field
    leaves no archive and no folder (nor any bookkeeping file inside one).
    """
    out = open_store(url)
    existed = out.root_exists()
    try:
        yield out
    except BaseException:
        if existed or _lists_anything(out):
            out.close()
        else:
            _discard(out)
        raise
    out.close()


def _lists_anything(store: Store) -> bool:
    try:
        return bool(store.list(recursive=True))
    except Exception:  # cannot tell: keep what is there
        return True


def _discard(out: Store) -> None:
    with contextlib.suppress(OSError):  # e.g. a read-only disk refuses even to unlink nothing
        out.abort()
    if out.kind == "folder" and "://" not in out.url:
        shutil.rmtree(out.url, ignore_errors=True)
