"""`hpasc predict fields`: apply trained runs to your own images (no labels needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.commands.segment import Method


def predict_fields(
    images: str = typer.Argument(
        ..., help="Your image set: <id>_{red,green,blue,yellow}.png (folder, zip, URL)."
    ),
    runs: list[Path] = typer.Option(
        ..., "--runs", help="Trained run folder (repeat for several; image- and cell-level)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Output folder (masks, cells.csv/.parquet, overlays)."
    ),
    method: Method = typer.Option(
        Method.classical, "--method", help="Segmentation: classical, hpa-unet or cellpose."
    ),
    size: int = typer.Option(
        None,
        "--size",
        min=32,
        help="Field side the runs expect (default: read from the run's training data).",
    ),
    crop_size: int = typer.Option(
        None,
        "--crop-size",
        min=2,
        help="Crop side of cell-level runs (default: from their training crops).",
    ),
    tta: str = typer.Option(None, "--tta", help="d4 or none (default: each run's own setting)."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Processes for segmentation and resizing."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo masks already in OUTPUT."),
) -> None:
    """Segment your fields, predict every cell with trained runs, write a per-cell table and overlays."""
    from hpasc.commands._training import check_tta
    from hpasc.pipeline.apply import predict_fields_end_to_end

    check_tta(tta)

    table = predict_fields_end_to_end(
        images,
        [str(r) for r in runs],
        output,
        method=method.value,
        size=size,
        crop_size=crop_size,
        tta=tta,
        workers=workers,
        overwrite=overwrite,
    )
    typer.echo(
        f"{table['image_id'].nunique()} fields, {len(table)} cells -> {output}/cells.csv, "
        f"{output}/overlays/ (report: hpasc report {output})"
    )


def register(app: typer.Typer) -> None:
    from hpasc.commands import predict_app

    predict_app.command("fields")(predict_fields)
