"""`hpasc segment` and `hpasc weights download`: cell masks of an image set, HPA U-Net weights."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import DownloadColumn, TransferSpeedColumn

from hpasc import progress
from hpasc.commands import report_summary, warn_if_in_memory
from hpasc.commands._options import ON_ERROR, OVERWRITE, SHARD, with_options
from hpasc.errors import InputError
from hpasc.segment.sets import SegmentOptions, segment_set


@with_options(exclude={"options": ("method_options",)})
def segment(
    images: str = typer.Argument(
        ..., help="Image store (<id>_<channel>.png): folder, x.zip, x.zip/sub or URL."
    ),
    output: str = typer.Argument(..., help="Mask store to write: <id>.png, 16-bit cell labels."),
    shard: str = SHARD,
    nuclei_model: Path = typer.Option(
        None, "--nuclei-model", help="hpa-unet: nucleus weights (dpn_unet_nuclei_v1.pth)."
    ),
    cell_model: Path = typer.Option(
        None, "--cell-model", help="hpa-unet: cell weights (dpn_unet_cell_3ch_v1.pth)."
    ),
    two_channel: bool = typer.Option(
        False, "--two-channel", help="hpa-unet: the cell model is the 2-channel one (no ER input)."
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
    overwrite: bool = OVERWRITE,
    on_error: str = ON_ERROR,
    *,
    options: SegmentOptions,
) -> None:
    """Segment every field of an image set into cell masks (uint16 PNG <id>.png)."""
    warn_if_in_memory(output, options.nuclei_out)
    method_options: dict[str, object] = {}
    if options.method == "hpa-unet":
        method_options.update(
            nuclei_model=nuclei_model,
            cell_model=cell_model,
            two_channel=two_channel,
            label_scale=label_scale,
            device=device,
        )
        if uint8_labels:
            method_options["label_options"] = {"uint8_labels": True}
    else:
        given = [
            flag
            for flag, value in (
                ("--nuclei-model", nuclei_model),
                ("--cell-model", cell_model),
                ("--device", device),
                ("--label-scale", label_scale),
                ("--uint8-labels", uint8_labels or None),
            )
            if value is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)}: only for --method hpa-unet")
        if working_size is not None:
            method_options["working_size"] = working_size
    summary = segment_set(
        images,
        output,
        options,
        method_options=method_options,
        shard=shard,
        overwrite=overwrite,
        on_error=on_error,
    )
    # The data verbs report alike: counts, and exit 1 when fields failed (--on-error skip).
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
    # torch (hpa_weights reads .pth files): loaded by this command only, not by every `hpasc`
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
