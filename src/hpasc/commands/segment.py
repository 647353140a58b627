"""`hpasc segment` and `hpasc weights download`: cell masks of an image set, HPA U-Net weights."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.progress import DownloadColumn, TransferSpeedColumn

from hpasc import progress


class Method(StrEnum):
    classical = "classical"
    hpa_unet = "hpa-unet"
    cellpose = "cellpose"


class Preset(StrEnum):
    hpacellseg = "hpacellseg"
    pfcell_2021 = "pfcell-2021"
    fast = "fast"


def segment(
    images: str = typer.Argument(
        ..., help="Image store (<id>_<channel>.png): folder, x.zip, x.zip/sub or URL."
    ),
    output: str = typer.Argument(..., help="Mask store to write: <id>.png, 16-bit cell labels."),
    method: Method = typer.Option(
        Method.classical, "--method", "-m", help="classical (no weights), hpa-unet or cellpose."
    ),
    nuclei_out: str = typer.Option(
        None, "--nuclei-out", help="Also write nucleus masks (<id>.png) to this store."
    ),
    workers: int = typer.Option(
        1, "--workers", "-j", min=1, help="Processes: fields in parallel (hpa-unet: label_cell)."
    ),
    shard: str = typer.Option(
        None,
        "--shard",
        help="Process only shard i of n (0-based, e.g. 0/4): sorted ids i, i+n, ...",
    ),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, help="Fields per network forward (hpa-unet)."
    ),
    nuclei_model: Path = typer.Option(
        None, "--nuclei-model", help="hpa-unet: nucleus weights (dpn_unet_nuclei_v1.pth)."
    ),
    cell_model: Path = typer.Option(
        None, "--cell-model", help="hpa-unet: cell weights (dpn_unet_cell_3ch_v1.pth)."
    ),
    two_channel: bool = typer.Option(
        False, "--two-channel", help="hpa-unet: the cell model is the 2-channel one (no ER input)."
    ),
    preset: Preset = typer.Option(
        None,
        "--preset",
        help="hpa-unet pipeline: hpacellseg (default; HPA's CellSegmentator), pfcell-2021 "
        "(7th place: every field at 512 px) or fast (cv2 resampling, label scale 0.5).",
    ),
    label_scale: float = typer.Option(
        None,
        "--label-scale",
        min=0.05,
        max=2.0,
        help="hpa-unet: label_cell resolution relative to 2048 px (default: hpacellseg the "
        "field's own, pfcell-2021 1.0, fast 0.5).",
    ),
    uint8_labels: bool = typer.Option(
        False,
        "--uint8-labels",
        help="hpa-unet: the original's uint8 cast in label_cell (labels wrap above 255 cells).",
    ),
    device: str = typer.Option(
        None, "--device", help="hpa-unet: cuda, cuda:N or cpu (default: auto)."
    ),
    working_size: int = typer.Option(
        None,
        "--working-size",
        min=16,
        help="classical, cellpose: longer side to work at (default: input side / 4, at least 512).",
    ),
    eight_bit: str = typer.Option(
        "ceil257",
        "--eight-bit",
        help="16-bit → 8-bit: ceil257 (HPA's rule) or opencv (read as cv2.imread(path, "
        "IMREAD_GRAYSCALE): the 7th place).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Redo fields whose masks exist (default: skip them, i.e. resume).",
    ),
    on_error: str = typer.Option(
        "stop",
        "--on-error",
        help="stop: the first failing field stops the run; skip: log it to OUT/errors.csv, go on.",
    ),
) -> None:
    """Segment every field of an image set into cell masks (uint16 PNG <id>.png)."""
    from hpasc.commands import warn_if_in_memory
    from hpasc.errors import InputError
    from hpasc.segment.sets import segment_set

    warn_if_in_memory(output, nuclei_out)
    name = method.value
    options: dict[str, object] = {}
    if name == "hpa-unet":
        options.update(
            nuclei_model=nuclei_model,
            cell_model=cell_model,
            two_channel=two_channel,
            preset=(preset or Preset.hpacellseg).value,
            label_scale=label_scale,
            device=device,
        )
        if uint8_labels:
            options["label_options"] = {"uint8_labels": True}
    else:
        given = [
            flag
            for flag, value in (
                ("--nuclei-model", nuclei_model),
                ("--cell-model", cell_model),
                ("--device", device),
                ("--preset", preset),
                ("--label-scale", label_scale),
                ("--uint8-labels", uint8_labels or None),
            )
            if value is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)}: only for --method hpa-unet")
        if working_size is not None:
            options["working_size"] = working_size
    summary = segment_set(
        images,
        output,
        method=name,
        nuclei_out=nuclei_out,
        workers=workers,
        shard=shard,
        batch_size=batch_size,
        overwrite=overwrite,
        on_error=on_error,
        options=options,
        eight_bit=eight_bit,
    )
    # The data verbs report alike: counts, and exit 1 when fields failed (--on-error skip).
    from hpasc.commands import report_summary

    report_summary(output, summary)


def download(
    directory: Path = typer.Argument(
        None,
        help="Folder for the .pth files (default: $HPASC_WEIGHTS_DIR or ~/.cache/hpasc/weights).",
    ),
    two_channel: bool = typer.Option(
        False, "--two-channel", help="Also fetch the 2-channel cell model (dpn_unet_cell_v2.pth)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Fetch again even if present."),
) -> None:
    """Download the published HPA nucleus and cell weights (Zenodo record 4665863)."""
    from hpasc.segment.hpa_weights import default_weights_dir, download_weights

    directory = directory or default_weights_dir()
    roles = ("nuclei", "cell", "cell-2ch") if two_channel else ("nuclei", "cell")
    with progress.bar(DownloadColumn(), TransferSpeedColumn()) as bar:
        tasks: dict[str, int] = {}

        def show(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        results = download_weights(directory, roles, overwrite=overwrite, progress=show)
    for r in results:
        state = "present" if r.skipped else "downloaded"
        check = "size and MD5 match the record" if r.verified else "not checked against the record"
        typer.echo(f"{r.path}: {state}, {r.size} bytes, MD5 {r.md5} ({check})")


def register(app: typer.Typer) -> None:
    from hpasc.commands import weights_app

    app.command("segment")(segment)
    weights_app.command("download")(download)
