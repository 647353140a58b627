"""CLI command modules. Each module defines ``register(app)``; ``hpasc.cli`` discovers them.

Verbs with sub-verbs shared by several modules (``hpasc train image-level`` and ``hpasc train
cell-level`` live in different modules) hang off the groups defined here.
"""

from __future__ import annotations

import typer

# Settings of every Typer app of hpasc. Help texts are plain text: they name paths like
# ``x.zip[/sub]`` that rich markup would take for tags (and crash on).
APP_SETTINGS: dict = {
    "no_args_is_help": True,
    "add_completion": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, **APP_SETTINGS)


train_app = _group("Train a model per fold (image-level CAM model or cell-level crop model).")
predict_app = _group("Predict per-cell probabilities with trained runs.")
weights_app = _group("Segmentation network weights (HPA U-Net).")
submission_app = _group("Inspect and validate Kaggle submission files.")
import_app = _group("Import external data (public HPA images).")
cells_app = _group("Cell tables: average, inspect.")

GROUPS = {
    "train": train_app,
    "predict": predict_app,
    "weights": weights_app,
    "submission": submission_app,
    "import": import_app,
    "cells": cells_app,
}


def register_groups(app: typer.Typer) -> None:
    """Attach the shared groups that have at least one command."""
    for name, group in GROUPS.items():
        if group.registered_commands or group.registered_groups:
            app.add_typer(group, name=name)


def warn_if_in_memory(*outputs: str | None) -> None:
    """Warn on stderr about ``memory://`` outputs: they vanish when this command ends."""
    for url in outputs:
        if url is not None and str(url).lower().startswith("memory://"):
            typer.echo(
                f"warning: {url} is in this process's memory and disappears when the command "
                "ends; write to a folder, a .zip or a remote URL to keep it",
                err=True,
            )


def report_summary(out: str, summary) -> None:
    """Print a per-field run summary; exit 1 when fields failed (they are listed in OUT/errors.csv)."""
    typer.echo(f"{out}: {summary}")
    if summary.failed:
        typer.echo(f"{summary.failed} field(s) failed; see {out}/errors.csv", err=True)
        raise typer.Exit(1)
