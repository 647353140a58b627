"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class HpascError(Exception):
    """Base class: a problem with the user's input, named with the file or key and the fix."""


class ConfigError(HpascError):
    """A bad configuration file, key or value."""


class InputError(HpascError):
    """A missing, corrupt or inconsistent input file or table."""


class OutputError(HpascError):
    """An output that cannot be written (exists, not writable, ...)."""
