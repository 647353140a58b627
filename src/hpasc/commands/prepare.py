"""`hpasc resize` and `hpasc crop`: prepare image, mask and crop sets."""

from __future__ import annotations

import typer

from hpasc.commands import report_summary, warn_if_in_memory

_WORKERS = typer.Option(1, "--workers", "-j", min=1, help="Worker processes.")
_SHARD = typer.Option(
    None, "--shard", help="Process only shard i of n (0-based, e.g. 0/4): sorted ids i, i+n, ..."
)
_OVERWRITE = typer.Option(
    False, "--overwrite", help="Redo fields whose outputs exist (default: skip them, i.e. resume)."
)
_ON_ERROR = typer.Option(
    "stop",
    "--on-error",
    help="stop: the first failing field stops the run; skip: log it to OUT/errors.csv, go on.",
)


def resize(
    input: str = typer.Argument(..., help="Input store: folder, x.zip, x.zip/sub or URL."),
    output: str = typer.Argument(..., help="Output store (created): folder, x.zip[/sub] or URL."),
    size: int = typer.Option(..., "--size", "-s", min=1, help="Output side S (fields become S×S)."),
    masks: bool = typer.Option(
        False, "--masks", help="Resize instance masks <id>.png (exact nearest neighbour)."
    ),
    interpolation: str = typer.Option(
        "auto",
        "--interpolation",
        help="auto (area when shrinking, linear when enlarging), area, linear (the 7th "
        "place's cv2.resize default), nearest, cubic.",
    ),
    dtype: str = typer.Option(
        None, "--dtype", help="uint8: convert 16-bit images to 8 bits (default: keep bit depth)."
    ),
    eight_bit: str = typer.Option(
        "ceil257",
        "--eight-bit",
        help="16-bit → 8-bit: ceil257 (HPA's rule, after the resize) or opencv (read as "
        "cv2.imread(path, IMREAD_GRAYSCALE), before the resize: the 7th place).",
    ),
    workers: int = _WORKERS,
    shard: str = _SHARD,
    overwrite: bool = _OVERWRITE,
    on_error: str = _ON_ERROR,
) -> None:
    """Resize every field (4 channel PNGs) or every mask of a store to S×S."""
    from hpasc.prepare import resize_set

    warn_if_in_memory(output)
    summary = resize_set(
        input,
        output,
        size,
        masks=masks,
        interpolation=interpolation,
        dtype=dtype,
        eight_bit=eight_bit,
        workers=workers,
        shard=shard,
        overwrite=overwrite,
        on_error=on_error,
    )
    report_summary(output, summary)


def crop(
    images: str = typer.Argument(..., help="Image store (<id>_<channel>.png)."),
    masks: str = typer.Argument(..., help="Mask store (<id>.png) at the images' resolution."),
    output: str = typer.Argument(
        ..., help="Crop set to write: <id>.crops records + cells.parquet."
    ),
    size: int = typer.Option(192, "--size", "-s", min=2, help="Crop side S (8 planes S×S/cell)."),
    orig_masks: str = typer.Option(
        None,
        "--orig-masks",
        help="Masks at original resolution: adds *_orig columns (area, bbox) to the cell table.",
    ),
    workers: int = _WORKERS,
    shard: str = _SHARD,
    overwrite: bool = _OVERWRITE,
    on_error: str = _ON_ERROR,
) -> None:
    """Crop every cell (8 planes: center + whole per RGBY channel) and write the cell table."""
    from hpasc.prepare import crop_set

    warn_if_in_memory(output)
    summary = crop_set(
        images,
        masks,
        output,
        size,
        orig_masks=orig_masks,
        workers=workers,
        shard=shard,
        overwrite=overwrite,
        on_error=on_error,
    )
    report_summary(output, summary)


def register(app: typer.Typer) -> None:
    app.command("resize")(resize)
    app.command("crop")(crop)
