"""The `hpasc` command line.

Thin layer: every command parses arguments, calls the library and reports. Commands live in
``hpasc.commands.<concern>`` modules, each exposing ``register(app)``; they are discovered here so
that adding a concern never edits this file. Heavy imports (torch, ...) happen inside commands.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
import warnings

import typer

from hpasc import __version__
from hpasc.commands import APP_SETTINGS
from hpasc.errors import HpascError, environment_error

app = typer.Typer(
    name="hpasc",
    help=(
        "Segment every cell in Human Protein Atlas images and predict, per cell, where the "
        "protein is (19 classes), trained from image-level labels only."
    ),
    epilog="Exit codes: 0 done; 1 some fields failed (see OUT/errors.csv); 2 a usage, input or "
    "environment error (one 'error: ...' line), or no command given (this help); 130 interrupted.",
    pretty_exceptions_enable=False,
    **APP_SETTINGS,
)

_DEBUG = {"on": False}

# `hpasc --help` lists verbs in pipeline order (data -> models -> submission -> whole runs).
_ORDER = [
    "synth",
    "import",
    "folds",
    "resize",
    "segment",
    "weights",
    "crop",
    "train",
    "predict",
    "oof",
    "cells",
    "submit",
    "submission",
    "evaluate",
    "run",
    "demo",
    "report",
    "bundle",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hpasc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks for errors (also: HPASC_DEBUG=1)."
    ),
) -> None:
    """Segment every cell in HPA images and predict its protein location (19 classes)."""
    _DEBUG["on"] = debug or os.environ.get("HPASC_DEBUG") == "1"
    if not _DEBUG["on"]:
        # Lightning's INFO lines (device summary, limit_*_batches notes, advertising tips) bury
        # hpasc's own progress on the terminal; warnings and errors still show.
        # Lightning resets its package logger's level on import, but not its children's.
        for name in (
            "lightning.pytorch.utilities.rank_zero",
            "lightning.fabric.utilities.rank_zero",
        ):
            logging.getLogger(name).setLevel(logging.WARNING)


def _register_commands() -> None:
    from hpasc import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"hpasc.commands.{info.name}")
        module.register(app)
    commands.register_groups(app)

    def rank(name: str | None) -> int:
        return _ORDER.index(name) if name in _ORDER else len(_ORDER)

    app.registered_commands.sort(key=lambda c: rank(c.name))
    app.registered_groups.sort(key=lambda g: rank(g.name))


_register_commands()


def _usage_line(exc: Exception) -> str:
    """One line for a click usage error, whichever click raised it (Typer's vendored copy or the
    real package): the command, the message and where to get help."""
    ctx = getattr(exc, "ctx", None)
    message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    if ctx is None:
        return f"error: {message}"
    path = ctx.command_path
    return f"error: {path}: {message}{_valid_range(exc)} (see '{path} --help')"


def _valid_range(exc: Exception) -> str:
    """`` (valid: [lo, hi])`` of the option a usage error is about, when it has bounds."""
    param = getattr(exc, "param", None)
    # Typer's own parameters carry min/max; click's carry them on their IntRange/FloatRange type
    bounds = [getattr(param, "min", None), getattr(param, "max", None)]
    if bounds == [None, None]:
        kind = getattr(param, "type", None)
        bounds = [getattr(kind, "min", None), getattr(kind, "max", None)]
    low, high = bounds
    if low is None and high is None:
        return ""
    if high is None:
        return f" (valid: >= {low})"
    if low is None:
        return f" (valid: <= {high})"
    return f" (valid: [{low}, {high}])"


def _is_click_exception(exc: BaseException) -> bool:
    # Recent Typer releases vendor click as ``typer._click`` with its own exception classes, so
    # ``isinstance(exc, click.ClickException)`` misses them; both kinds carry these two members.
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def _show_help_instead(exc: BaseException) -> bool:
    """True for click's "no arguments given, show help" signal (a usage error in click >= 8.2)."""
    return type(exc).__name__ == "NoArgsIsHelpError"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # a warning is for the user: one line, without the source line that raised it
    return f"warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: user errors become one line and a non-zero exit.

    Exit codes: 0 success, 1 some fields failed (listed in errors.csv), 2 a user error (bad
    option, input, config or environment: one ``error: ...`` line; ``hpasc`` or a command group
    without a sub-command prints its help and exits 2 too; 0 under click < 8.2, which treats
    that as a help request), 130 interrupted.
    """
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        _run(argv)
    finally:
        warnings.formatwarning = formatwarning


def _run(argv: list[str] | None) -> None:
    try:
        rc = app(args=argv, prog_name="hpasc", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except HpascError as exc:
        _fail(exc, str(exc))
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except OSError as exc:
        message = environment_error(exc)
        if message is None:
            raise
        _fail(exc, message)
    except Exception as exc:
        # Exit and Abort by name: typer's own classes or click's, whichever raised them
        if type(exc).__name__ == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        if _show_help_instead(exc):
            typer.echo(exc.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(2)
        if not _is_click_exception(exc):
            raise
        if _DEBUG["on"]:
            raise
        typer.echo(_usage_line(exc), err=True)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]


def _fail(exc: BaseException, message: str) -> None:
    if _DEBUG["on"]:
        raise exc
    typer.echo(f"error: {message}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
