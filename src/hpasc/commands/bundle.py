"""`hpasc bundle`: an offline zip (wheels, runs, recipe, INSTALL.txt) for Kaggle notebooks."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.bundle import make_bundle


def bundle(
    out: Path = typer.Argument(..., help="The bundle zip to write (replaced atomically)."),
    runs: list[Path] = typer.Option(
        ..., "--runs", help="Run folder(s) whose configs and checkpoints go in (repeatable)."
    ),
    recipe: Path = typer.Option(None, "--recipe", help="A recipe YAML to include."),
    segmentation_weights: Path = typer.Option(
        None, "--segmentation-weights", help="Folder of HPA U-Net weight files to include."
    ),
    extra_wheels_for: str = typer.Option(
        "kaggle",
        "--extra-wheels-for",
        help="Which dependency wheels: kaggle (what a Kaggle image lacks) or none.",
    ),
    with_: list[str] = typer.Option(
        [], "--with", help="Also bundle this package (name, pinned to the installed version)."
    ),
    without: list[str] = typer.Option(
        [], "--without", help="Leave this package of the list out (repeatable)."
    ),
    find_links: list[str] = typer.Option(
        [], "--find-links", help="Folder or URL of wheels for pip to use (repeatable)."
    ),
    no_index: bool = typer.Option(
        False, "--no-index", help="Do not ask the package index; use only --find-links/cache."
    ),
    source: Path = typer.Option(
        None, "--source", help="hpasc source tree for its wheel (default: this installation's)."
    ),
) -> None:
    """Write an offline bundle: hpasc + dependency wheels, run checkpoints, recipe, INSTALL.txt."""
    summary = make_bundle(
        out,
        runs,
        recipe=recipe,
        segmentation_weights=segmentation_weights,
        profile=extra_wheels_for,
        with_=with_,
        without=without,
        find_links=find_links,
        no_index=no_index,
        source=source,
    )
    typer.echo(str(summary))
