"""The `hpasc` command line.

Thin layer: every command parses arguments, calls the library and reports. Commands live in
``hpasc.commands.<concern>`` modules, each exposing ``register(app)``; they are discovered here so
that adding a concern never edits this file. Heavy imports (torch, ...) happen inside commands.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from hpasc import __version__
from hpasc.errors import HpascError

app = typer.Typer(
    name="hpasc",
    help=(
        "Segment every cell in Human Protein Atlas images and predict, per cell, where the "
        "protein is (19 classes), trained from image-level labels only."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: user errors become one line and a non-zero exit."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except HpascError as exc:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
