"""`hpasc resize` and `hpasc crop`: prepare image, mask and crop sets."""

from __future__ import annotations

import typer

from hpasc.commands import report_summary, warn_if_in_memory
from hpasc.commands._options import ON_ERROR, OVERWRITE, SHARD, with_options
from hpasc.prepare import CropOptions, ResizeOptions, crop_set, resize_set


@with_options()
def resize(
    input: str = typer.Argument(..., help="Input store: folder, x.zip, x.zip/sub or URL."),
    output: str = typer.Argument(..., help="Output store (created): folder, x.zip[/sub] or URL."),
    shard: str = SHARD,
    overwrite: bool = OVERWRITE,
    on_error: str = ON_ERROR,
    *,
    options: ResizeOptions,
) -> None:
    """Resize every field (4 channel PNGs) or every mask of a store to S×S."""
    warn_if_in_memory(output)
    summary = resize_set(
        input, output, options, shard=shard, overwrite=overwrite, on_error=on_error
    )
    report_summary(output, summary)


@with_options()
def crop(
    images: str = typer.Argument(..., help="Image store (<id>_<channel>.png)."),
    masks: str = typer.Argument(..., help="Mask store (<id>.png) at the images' resolution."),
    output: str = typer.Argument(
        ..., help="Crop set to write: <id>.crops records + cells.parquet."
    ),
    shard: str = SHARD,
    overwrite: bool = OVERWRITE,
    on_error: str = ON_ERROR,
    *,
    options: CropOptions,
) -> None:
    """Crop every cell (8 planes: center + whole per RGBY channel) and write the cell table."""
    warn_if_in_memory(output)
    summary = crop_set(
        images, masks, output, options, shard=shard, overwrite=overwrite, on_error=on_error
    )
    report_summary(output, summary)
