"""`hpasc train image-level`, `hpasc predict image-level`, `hpasc oof`: CAM-consistency models."""

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
from hpasc.predict.base import write_predictions
from hpasc.predict.image_level import predict_fields, predict_valid
from hpasc.predict.oof import join_oof
from hpasc.predict.options import PredictOptions
from hpasc.runconfig.image_level import load_image_level_config
from hpasc.train.image_level import train_fold

train_image_level = train_command(
    load_image_level_config,
    train_fold,
    "Image-level config YAML (e.g. configs/image-level/b2-768.yaml).",
    "Config overrides a.b=value (e.g. data.root=/data/hpa optim.lr=3e-4).",
    "Train an image-level CAM-consistency model on one fold or all folds.",
)


@with_options(exclude={"options": ("progress",)})
def predict_image_level(
    run: list[Path] = typer.Argument(
        ..., help="Run folder(s) or fold folder(s) of image-level models."
    ),
    images: str = typer.Option(
        None,
        "--images",
        help="Image store (required for --split test; replaces the config's for valid).",
    ),
    masks: str = typer.Option(
        None, "--masks", help="Mask store at the images' resolution (as --images)."
    ),
    split: str = typer.Option(
        "test",
        "--split",
        help="valid: each fold predicts its own validation fields; test: every field of --images, mean of the folds.",
    ),
    output: Path = OUTPUT,
    image_output: Path = typer.Option(
        None, "--image-output", help="Image-level table (default: <output>.images.parquet)."
    ),
    *,
    options: PredictOptions,
) -> None:
    """Predict per-cell probabilities with image-level runs (CAM mean in each cell, optional D4 TTA)."""
    check_split(split)
    predict_folds(
        run,
        split,
        output,
        image_output,
        lambda folds: predict_fields(folds, images, masks, options),
        lambda fold: predict_valid(fold, options, images, masks),
        test_needs="--images, --masks",
        test_ready=bool(images and masks),
    )


def oof(
    runs_: list[Path] = typer.Argument(
        ...,
        metavar="RUNS...",
        help="Run folder(s) or fold folders whose validation predictions to join.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Out-of-fold cell table (.parquet)."),
    image_output: Path = typer.Option(
        None, "--image-output", help="Image-level table (default: <output>.images.parquet)."
    ),
) -> None:
    """Join each fold's validation predictions into one out-of-fold table over all training fields."""
    cells, images = join_oof(runs_)
    paths = write_predictions(cells, images, output, image_output)
    typer.echo(f"out-of-fold: {len(images)} fields, {len(cells)} cells -> {paths[0]}, {paths[1]}")
