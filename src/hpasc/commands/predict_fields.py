"""`hpasc predict fields`: apply trained runs to your own images (no labels needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.commands._options import with_options
from hpasc.pipeline.apply import predict_fields_end_to_end
from hpasc.predict.options import PredictOptions
from hpasc.segment.sets import SegmentOptions


@with_options(
    exclude={
        "segment": ("method_options", "nuclei_out", "batch_size"),
        "predict": ("progress", "num_workers", "checkpoint"),
    }
)
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo masks already in OUTPUT."),
    *,
    segment: SegmentOptions,
    predict: PredictOptions,
) -> None:
    """Segment your fields, predict every cell with trained runs, write a per-cell table and overlays."""
    table = predict_fields_end_to_end(
        images,
        [str(r) for r in runs],
        output,
        segment=segment,
        predict=predict,
        size=size,
        crop_size=crop_size,
        overwrite=overwrite,
    )
    typer.echo(
        f"{table['image_id'].nunique()} fields, {len(table)} cells -> {output}/cells.csv, "
        f"{output}/overlays/ (report: hpasc report {output})"
    )
