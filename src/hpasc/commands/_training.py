"""Flow shared by the `train image-level|cell-level` and `predict image-level|cell-level` verbs.

The verbs differ only in their config schema, trainer and predictor; this module (not a command
module: its name starts with ``_``) runs the folds and writes the tables for both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from hpasc.errors import ConfigError
from hpasc.io import runs
from hpasc.predict.base import write_predictions
from hpasc.train.fitting import folds_to_train

Tables = tuple[Any, Any]  # (cell table, image-level table)

# options both `train` verbs and both `predict` verbs take, with the same meaning
FOLD = typer.Option("all", "--fold", help="Fold to train: an index, a list like 0,2, or 'all'.")
RESUME = typer.Option(False, "--resume", help="Continue from each fold's checkpoints/last.ckpt.")
RUN_DIR = typer.Option(
    None, "--run-dir", help="Run folder (default: runs/<config name>); folds go to fold-<k>/."
)
OUTPUT = typer.Option(
    None,
    "-o",
    "--output",
    help="Cell table (.parquet). For --split valid without it, each fold writes valid_cells.parquet.",
)


def train_command(
    load_config: Callable[..., Any],
    train_fold: Callable[..., Path],
    config_help: str,
    overrides_help: str,
    doc: str,
) -> Callable[..., None]:
    """The ``hpasc train <kind>`` command of a model kind: its config loader and fold trainer,
    the help of its two arguments and its docstring (the command's help)."""

    def command(
        config: Path = typer.Argument(..., help=config_help),
        overrides: list[str] = typer.Argument(None, help=overrides_help),
        fold: str = FOLD,
        resume: bool = RESUME,
        run_dir: Path = RUN_DIR,
    ) -> None:
        train_folds(load_config, train_fold, config, overrides, fold, resume, run_dir)

    command.__doc__ = doc
    return command


def train_folds(
    load_config: Callable[..., Any],
    train_fold: Callable[..., Path],
    config: Path,
    overrides: list[str] | None,
    fold: str,
    resume: bool,
    run_dir: Path | None,
) -> None:
    """Load ``config`` with ``overrides`` and train each selected fold into ``run_dir``."""
    cfg = load_config(config, overrides or [])
    run_dir = run_dir or Path("runs") / (cfg.name or config.stem)
    for k in folds_to_train(cfg, fold):
        out = train_fold(cfg, k, run_dir, resume=resume)
        typer.echo(f"fold {k}: trained -> {out}")


def check_split(split: str) -> None:
    if split not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {split!r}")


def predict_folds(
    run: list[Path],
    split: str,
    output: Path | None,
    image_output: Path | None,
    predict_test: Callable[[list[Path]], Tables],
    predict_valid: Callable[[Path], Tables],
    test_needs: str,
    test_ready: bool,
) -> None:
    """Predict the fold folders of ``run`` and write the cell and image-level tables.

    ``split="test"``: ``predict_test(folds)`` (mean of the folds) into ``output``; without
    ``test_ready`` (its inputs given) or ``output``, a :class:`ConfigError` names ``test_needs``.
    ``split="valid"``: ``predict_valid(fold)`` for each fold, written into each fold folder
    without ``output``, joined into ``output`` with it.
    """
    folds = runs.find_fold_dirs(run)
    if split == "test":
        if not test_ready or output is None:
            raise ConfigError(f"--split test needs {test_needs} and -o")
        cells, images = predict_test(folds)
        paths = write_predictions(cells, images, output, image_output)
        typer.echo(
            f"{len(images)} fields, {len(cells)} cells ({len(folds)} fold model(s)) -> {paths[0]}, {paths[1]}"
        )
        return
    parts = []
    for fp in folds:
        cells, images = predict_valid(fp)
        if output is None:
            paths = write_predictions(cells, images, *runs.valid_tables(fp))
            typer.echo(f"{fp}: {len(images)} validation fields, {len(cells)} cells -> {paths[0]}")
        parts.append((cells, images))
    if output is not None:
        cells = pd.concat([c for c, _ in parts], ignore_index=True)
        images = pd.concat([i for _, i in parts], ignore_index=True)
        paths = write_predictions(cells, images, output, image_output)
        typer.echo(f"{len(images)} validation fields, {len(cells)} cells -> {paths[0]}, {paths[1]}")
