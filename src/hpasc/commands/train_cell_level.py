"""`hpasc train cell-level`, `hpasc predict cell-level`: classifiers of 8-plane cell crops."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.commands._options import with_options
from hpasc.commands._training import (
    OUTPUT,
    check_split,
    predict_folds,
    train_command,
)
from hpasc.predict.cell_level import predict_cell_fields, predict_cell_valid
from hpasc.predict.options import PredictOptions
from hpasc.runconfig.cell_level import load_cell_level_config
from hpasc.train.cell_level import train_fold

train_cell_level = train_command(
    load_cell_level_config,
    train_fold,
    "Cell-level config YAML (e.g. configs/cell-level/resnest50-from768-stage3.yaml).",
    "Config overrides a.b=value (e.g. data.root=/data/hpa data.batch_size=64).",
    "Train a cell-level crop classifier (soft or image labels) on one fold or all folds.",
)


@with_options(exclude={"options": ("progress", "upsample")})
def predict_cell_level(
    run: list[Path] = typer.Argument(
        ..., help="Run folder(s) or fold folder(s) of cell-level models."
    ),
    crops: str = typer.Option(
        None,
        "--crops",
        help="Crop set (required for --split test; replaces the config's for valid).",
    ),
    split: str = typer.Option(
        "test",
        "--split",
        help="valid: each fold predicts its own validation fields; test: every field of --crops, mean of the folds.",
    ),
    output: Path = OUTPUT,
    image_output: Path = typer.Option(
        None,
        "--image-output",
        help="Field table, every field incl. those without cells (default: <output>.images.parquet).",
    ),
    *,
    options: PredictOptions,
) -> None:
    """Predict per-cell probabilities with cell-level runs (optional D4 TTA, mean of the folds)."""
    check_split(split)
    predict_folds(
        run,
        split,
        output,
        image_output,
        lambda folds: predict_cell_fields(folds, crops, options),
        lambda fold: predict_cell_valid(fold, options, crops),
        test_needs="--crops",
        test_ready=bool(crops),
    )
