"""`hpasc synth`: a synthetic HPA-like data set with per-cell ground truth."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Argument(..., help="Folder to create (new or empty; see --overwrite)."),
    n_images: int = typer.Option(20, "--n-images", min=1, help="Number of fields."),
    size: int = typer.Option(512, "--size", min=128, help="Side of each square field in pixels."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same bytes)."),
    bit_depth: int = typer.Option(8, "--bit-depth", help="PNG bit depth: 8 or 16."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the data set in a non-empty OUT folder."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write synthetic HPA-like fields with true cell masks, train.csv and solution.csv."""
    if bit_depth not in (8, 16):
        raise typer.BadParameter(f"must be 8 or 16, got {bit_depth}", param_hint="--bit-depth")
    from hpasc.synth import synthesize

    summary = synthesize(
        out,
        n_images=n_images,
        size=size,
        seed=seed,
        bit_depth=bit_depth,
        overwrite=overwrite,
        progress=not quiet,
    )
    n_classes = len(summary.cell_class_counts)
    typer.echo(
        f"wrote {summary.out}: {summary.n_images} fields of {size}x{size} ({bit_depth}-bit), "
        f"{summary.n_cells} cells, {n_classes} classes in {summary.seconds:.1f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
