"""`hpasc report`: a self-contained HTML page with overlays, per-class AP, agreement and training curves."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.report import build_report


def report(
    source: Path = typer.Argument(
        ...,
        help="Output of `hpasc predict fields`/`hpasc demo` (has manifest.json), or a run folder.",
    ),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write."),
    max_fields: int = typer.Option(
        12, "--max-fields", min=1, help="How many field overlays to show."
    ),
    title: str = typer.Option(
        None, "--title", help="Page title (default: from the manifest or folder name)."
    ),
) -> None:
    """Write a self-contained HTML report: overlays by top class, per-class AP, agreement, training curves."""
    out = build_report(source, output, max_fields=max_fields, title=title)
    typer.echo(f"wrote {out}")
