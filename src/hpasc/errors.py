"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import errno
import os


class HpascError(Exception):
    """Base class: a problem with the user's input, named with the file or key and the fix."""


class ConfigError(HpascError):
    """A bad configuration file, key or value."""


class InputError(HpascError):
    """A missing, corrupt or inconsistent input file or table."""


class OptionError(InputError, ValueError):
    """An option value outside its range or choices (a user error and a ``ValueError``)."""


class OutputError(HpascError):
    """An output that cannot be written (exists, not writable, ...)."""


# errno -> what to do about it; OSErrors with other numbers are bugs and keep their traceback
_ENVIRONMENT_FIXES = {
    errno.EACCES: "check its permissions or choose another output folder",
    errno.EPERM: "check its permissions or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.ENOSPC: "free some space or choose an output folder on another disk",
    errno.EDQUOT: "free some space (disk quota) or choose another output folder",
    errno.ECONNREFUSED: "check the URL and that the server is running",
    errno.EHOSTUNREACH: "check the URL and the network",
    errno.ENETUNREACH: "check the URL and the network",
    errno.ETIMEDOUT: "check the URL and the network",
}


def environment_error(exc: BaseException) -> str | None:
    """One line for an OSError the environment caused (permissions, read-only or full disk,
    unreachable server), naming the file when known; None for any other exception."""
    if not isinstance(exc, OSError) or exc.errno not in _ENVIRONMENT_FIXES:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{reason}; {_ENVIRONMENT_FIXES[exc.errno]}"


def oserror_to_output_error(exc: OSError, path: object) -> OutputError:
    """An :class:`OutputError` naming ``path`` for ``exc`` (raised while writing ``path``)."""
    fix = _ENVIRONMENT_FIXES.get(exc.errno, "check that the location is writable and not a folder")
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {path}: {reason}; {fix}")
