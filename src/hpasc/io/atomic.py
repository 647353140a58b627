"""Atomic writes: every output file appears whole under its final name, or not at all.

One helper family for the whole project:

* :func:`atomic_write` — write ``bytes`` or ``str`` to a local path or an fsspec URL;
* :func:`atomic_open` — a binary write stream (for ``to_parquet``, ``torch.save``, ...);
* :func:`atomic_path` — a temporary path to hand to a writer that wants a path (a zip being
  built, a folder filled file by file), renamed onto the target on success.

Local targets are written to a hidden temp sibling (``.NAME.hpasc-tmp-<host>-<pid>-<rand>``)
and renamed over the target, so a reader sees the old file or the new one; leaving the block by
an exception deletes the temp. The host and pid in the name let a later run delete the
leftovers of a killed writer (:func:`remove_dead_temporaries`) and never those of a live one.
fsspec URLs (``memory://``, ``s3://``) are buffered and uploaded on close: object stores
publish an object only once it is complete.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import fsspec

from hpasc.errors import oserror_to_output_error

__all__ = ["atomic_write", "atomic_open", "atomic_path", "remove_dead_temporaries", "is_tmp"]

# Temporary files carry this marker so listings skip leftovers of a crashed writer.
TMP_MARK = ".hpasc-tmp-"
_SPOOL_MAX = 64 << 20
_COPY_CHUNK = 1 << 20


def is_tmp(path: str) -> bool:
    """Whether ``path`` (its last part) is one of our temporary files."""
    base = path.rsplit("/", 1)[-1]
    return base.startswith(".") and TMP_MARK in base


def tmp_sibling(target: Path) -> Path:
    """A fresh temp name beside ``target``, owned by this host and process."""
    owner = f"{socket.gethostname()}-{os.getpid()}"
    return target.with_name(f".{target.name}{TMP_MARK}{owner}-{secrets.token_hex(6)}")


def _dead_writer(name: str) -> bool:
    """Whether temp file ``name`` belongs to a process of this host that no longer runs."""
    owner = name.rpartition(TMP_MARK)[2]
    host, _, pid = owner.rpartition("-")[0].rpartition("-")  # <host>-<pid>-<random>
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def remove_dead_temporaries(folder: Path, prefix: str = "") -> int:
    """Delete the temp files (or folders) killed writers left in ``folder`` (names ``.<prefix>…``)."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for entry in it:
            mine = entry.name.startswith(f".{prefix}") and is_tmp(entry.name)
            if mine and _dead_writer(entry.name):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
    return removed


class AtomicFile(io.RawIOBase):
    """A binary write stream whose content appears under its final name only on close().

    Leaving a ``with`` block by an exception, or dropping the stream unclosed, discards it.
    A failing write or commit (disk full, read-only folder) raises an ``OutputError`` naming
    ``where``.
    """

    def __init__(
        self, raw: IO[bytes], commit: Callable[[IO[bytes]], None], abort: Callable, where: str
    ):
        super().__init__()
        self.where = where
        self._raw = raw
        self._commit = commit
        self._abort = abort
        self._done = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._raw.seekable()

    def write(self, data) -> int:
        try:
            return self._raw.write(data)
        except OSError as e:
            raise oserror_to_output_error(e, self.where) from None

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        if not self._done:
            self._raw.flush()

    def close(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._commit(self._raw)
            except OSError as e:
                raise oserror_to_output_error(e, self.where) from None
        super().close()

    def discard(self) -> None:
        """Drop what was written; the target is left as it was."""
        if not self._done:
            self._done = True
            self._abort(self._raw)
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def __del__(self) -> None:
        if hasattr(self, "_done"):
            self.discard()


def spooled_writer(commit: Callable[[IO[bytes]], None], where: str) -> AtomicFile:
    """A writer buffering in memory (spilling to disk) that hands the buffer to ``commit``."""

    def done(buf: IO[bytes]) -> None:
        try:
            buf.seek(0)
            commit(buf)
        finally:
            buf.close()

    buf = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX)  # noqa: SIM115 - closed by done()
    return AtomicFile(buf, done, lambda b: b.close(), where)


def _local_writer(target: Path) -> AtomicFile:
    tmp = tmp_sibling(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 keeps the umask's permissions (mkstemp would force 0o600).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)
    except OSError as e:
        raise oserror_to_output_error(e, target) from None
    raw = os.fdopen(fd, "wb")

    def commit(f: IO[bytes]) -> None:
        f.close()
        try:
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def abort(f: IO[bytes]) -> None:
        f.close()
        tmp.unlink(missing_ok=True)

    return AtomicFile(raw, commit, abort, str(target))


def fs_writer(fs: fsspec.AbstractFileSystem, path: str, where: str) -> AtomicFile:
    """A buffered writer uploading to ``path`` of ``fs`` on close (``where`` names it)."""

    def commit(buf: IO[bytes]) -> None:
        with fs.open(path, "wb") as out:
            shutil.copyfileobj(buf, out, _COPY_CHUNK)

    return spooled_writer(commit, where)


def _local(target: str | os.PathLike) -> Path | None:
    """The local path of ``target`` (a path or ``file://`` URL), None for other URLs."""
    text = os.fspath(target)
    if "://" not in text:
        return Path(text).expanduser()
    if text.lower().startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return None


def atomic_open(target: str | os.PathLike) -> AtomicFile:
    """A binary stream that replaces ``target`` (path or URL) when closed, atomically.

    Use it as a context manager: leaving the block by an exception keeps the old file.
    Parent folders are created.

    Examples
    --------
    >>> import pandas as pd, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "t.parquet"
    >>> with atomic_open(out) as f:
    ...     pd.DataFrame({"a": [1]}).to_parquet(f)
    >>> out.exists()
    True
    """
    local = _local(target)
    if local is not None:
        return _local_writer(local)
    fs, path = fsspec.core.url_to_fs(os.fspath(target))
    return fs_writer(fs, path, os.fspath(target))


def atomic_write(target: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> None:
    """Write ``data`` (``str`` is encoded with ``encoding``) to ``target`` atomically."""
    with atomic_open(target) as f:
        f.write(data.encode(encoding) if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside local ``target``; renamed onto it when the block ends normally.

    For writers that need a path (``zipfile``, a folder filled file by file). A folder
    target that exists is replaced whole; on an exception the temp is deleted and ``target``
    is left as it was.
    """
    final = _local(target)
    if final is None:
        raise ValueError(f"atomic_path needs a local path, got {os.fspath(target)!r}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final)
    try:
        yield tmp
        if tmp.is_dir() and final.is_dir():
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            old = tmp_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
