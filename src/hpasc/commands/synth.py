"""`hpasc synth`: a synthetic HPA-like data set with per-cell ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.commands._options import with_options
from hpasc.synth import SynthOptions, synthesize


@with_options()
def synth(
    out: Path = typer.Argument(..., help="Folder to create (new or empty; see --overwrite)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the data set in a non-empty OUT folder."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    *,
    options: SynthOptions,
) -> None:
    """Write synthetic HPA-like fields with true cell masks, train.csv and solution.csv."""
    summary = synthesize(out, options, overwrite=overwrite, progress=not quiet)
    n_classes = len(summary.cell_class_counts)
    size, bits = options.size, options.bit_depth
    typer.echo(
        f"wrote {summary.out}: {summary.n_images} fields of {size}x{size} ({bits}-bit), "
        f"{summary.n_cells} cells, {n_classes} classes in {summary.seconds:.1f} s"
    )
