"""The `hpasc` command line.

Thin layer: every command parses arguments, calls the library and reports. The commands live in
``hpasc.commands.<concern>`` modules; :data:`COMMANDS` names each one (group, name,
``module:function``, one-line help) and :class:`LazyGroup` imports a command's module only when
that command runs or its help is asked for, so ``hpasc --help`` (or ``hpasc train --help``) does
not import torch. A new command is one row of :data:`COMMANDS`.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import typer
from typer.core import TyperGroup

from hpasc import __version__
from hpasc.commands import APP_SETTINGS
from hpasc.errors import HpascError, environment_error


@dataclass(frozen=True)
class Command:
    """One verb of the command line: ``hpasc [group] name``, run by ``target``'s function."""

    name: str
    group: str | None
    target: str  # "module:function", a Typer callback (or a ready click command)
    help: str  # the one line of the command listings
    settings: dict[str, Any] = field(default_factory=dict)  # extra Typer command() arguments


#: sub-command groups: name -> one-line help
GROUPS: dict[str, str] = {
    "import": "Import external data (public HPA images).",
    "weights": "Segmentation network weights (HPA U-Net).",
    "train": "Train a model per fold (image-level CAM model or cell-level crop model).",
    "predict": "Predict per-cell probabilities with trained runs.",
    "cells": "Cell tables: average, inspect.",
    "submission": "Inspect and validate Kaggle submission files.",
}

_RUN_EPILOG = (
    "Examples:  hpasc run configs/recipes/pfcell-2021.yaml --data /data/hpa --dry-run  |  "
    "... --until prepared  |  ... --only cam-b2-768 --fold 3  |  ... --force ensemble  |  "
    "... --executor slurm --slurm-partition gpu  |  ... --cores 16 --gpus 4.  "
    "Recipe format and step kinds: docs/recipes.md."
)

_C = "hpasc.commands."
#: every command; ``hpasc --help`` lists the verbs in pipeline order (data -> models -> submission
#: -> whole runs): top-level commands and groups in :data:`_ORDER`, a group's commands as here.
COMMANDS: tuple[Command, ...] = (
    Command("synth", None, _C + "synth:synth", "Write synthetic HPA-like fields with true masks."),
    Command("public-hpa", "import", _C + "importer:public_hpa", "Download public HPA fields."),
    Command("folds", None, _C + "labels:folds", "Split fields into stratified folds."),
    Command("resize", None, _C + "prepare:resize", "Resize every field or mask of a set."),
    Command("segment", None, _C + "segment:segment", "Segment every field into cell masks."),
    Command("download", "weights", _C + "segment:download", "Download the HPA U-Net weights."),
    Command("crop", None, _C + "prepare:crop", "Crop every cell (8 planes) into a crop set."),
    Command(
        "image-level",
        "train",
        _C + "train_image_level:train_image_level",
        "Train an image-level CAM model per fold.",
    ),
    Command(
        "cell-level",
        "train",
        _C + "train_cell_level:train_cell_level",
        "Train a cell-level crop classifier per fold.",
    ),
    Command(
        "image-level",
        "predict",
        _C + "train_image_level:predict_image_level",
        "Predict cells with image-level runs.",
    ),
    Command(
        "cell-level",
        "predict",
        _C + "train_cell_level:predict_cell_level",
        "Predict cells with cell-level runs.",
    ),
    Command(
        "fields",
        "predict",
        _C + "predict_fields:predict_fields",
        "Segment and predict new fields end to end.",
    ),
    Command("oof", None, _C + "train_image_level:oof", "Join the folds' validation predictions."),
    Command("average", "cells", _C + "submit:average", "Average prediction tables cell by cell."),
    Command("submit", None, _C + "submit:submit", "Write the Kaggle submission CSV."),
    Command("check", "submission", _C + "submit:check", "Check a submission file."),
    Command("evaluate", None, _C + "submit:evaluate", "Score a submission (mAP at IoU 0.6)."),
    Command(
        "run",
        None,
        _C + "run:run",
        "Run a recipe's task graph (local processes or SLURM jobs).",
        {"epilog": _RUN_EPILOG},
    ),  # fmt: skip
    Command("demo", None, _C + "demo:demo", "Run the whole method on synthetic fields."),
    Command("report", None, _C + "report:report", "Write a self-contained HTML report."),
    Command(
        "bundle", None, _C + "bundle:bundle", "Write an offline bundle (wheels, runs, weights)."
    ),
)

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


def _rank(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def resolve(target: str) -> Any:
    """The object ``"module:attribute"`` names (imports the module)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_command(entry: Command):
    """The click command of ``entry``: its module imported, its callback turned into a command
    as ``app.command(name)`` would (a module may also offer a ready click command)."""
    target = resolve(entry.target)
    if callable(getattr(target, "make_context", None)):  # a click command (Typer's click or click)
        return target
    single = typer.Typer(**APP_SETTINGS)
    single.command(entry.name, **entry.settings)(target)
    return typer.main.get_command(single)


class LazyGroup(TyperGroup):
    """A command group whose commands are the rows of :data:`COMMANDS` with ``group == name``
    (the root group: ``group=None``) and the sub-groups of :data:`GROUPS`; a command's module is
    imported when it is looked up to run or to show its help, never to list it."""

    def __init__(self, *, group: str | None = None, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.group = group
        self.entries = {c.name: c for c in COMMANDS if c.group == group}
        self.groups = GROUPS if group is None else {}

    def list_commands(self, ctx) -> list[str]:
        names = [*self.entries, *self.groups]
        return sorted(names, key=_rank) if self.group is None else names

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in self.groups:
            return LazyGroup(
                group=cmd_name,
                name=cmd_name,
                help=self.groups[cmd_name],
                no_args_is_help=True,
                rich_markup_mode=self.rich_markup_mode,
                context_settings=APP_SETTINGS["context_settings"],
            )
        entry = self.entries.get(cmd_name)
        return None if entry is None else load_command(entry)

    def resolve_command(self, ctx, args: list[str]):
        # Typer suggests close names from the loaded commands only: here they come from the table
        name = args[0] if args else ""
        names = self.list_commands(ctx)
        if name and not name.startswith("-") and name not in names:
            close = difflib.get_close_matches(name, names)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter) -> None:
        helps = {**{n: e.help for n, e in self.entries.items()}, **self.groups}
        rows = [(name, helps[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="hpasc",
    cls=LazyGroup,
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
