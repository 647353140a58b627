"""`hpasc import public-hpa`: download public-HPA fields into an image set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from hpasc.commands import warn_if_in_memory
from hpasc.commands._options import with_options
from hpasc.errors import ConfigError
from hpasc.importer import ImportOptions, RetryPolicy, import_public_hpa


@with_options(exclude={"options": ("policy", "also"), "policy": ("max_backoff",)})
def public_hpa(
    table: Path = typer.Argument(
        ...,
        help="Public-HPA table (Image, Label_idx, in_trainset, Cellline, ...), e.g. kaggle_2021.tsv.",
    ),
    out: str = typer.Argument(
        ..., help="Output image set: a folder, a folder inside a .zip, or a URL."
    ),
    also: list[str] = typer.Option(
        None,
        "--also",
        help="SIZE=STORE: also write each field resized from the original to SIZE into STORE "
        "(repeatable; e.g. --size 1536 --also 768=/data/hpa/public-hpa-768).",
    ),
    workers: int = typer.Option(
        8, "--workers", "-j", min=1, help="Fields downloaded at once (processes)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N fields of the table."),
    shard: str = typer.Option(None, "--shard", help="Process shard i/n of the fields (0-based i)."),
    on_error: str = typer.Option(
        "stop",
        "--on-error",
        help="stop: first failed field stops the run; skip: log it to OUT/errors.csv.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    *,
    options: ImportOptions,
    policy: RetryPolicy,
) -> None:
    """Download public-HPA fields (4 channels each), resize and convert them into OUT/<id>_<color>.png."""
    warn_if_in_memory(out)
    if on_error not in ("stop", "skip"):
        raise ConfigError(f"--on-error must be 'stop' or 'skip', got {on_error!r}")
    pairs = []
    for item in also or []:
        n, sep, url = item.partition("=")
        if not sep or not n.strip().isdigit() or not url:
            raise ConfigError(f"--also must be SIZE=STORE (e.g. 768=out-768), got {item!r}")
        pairs.append((int(n), url))
    options = dataclasses.replace(options, also=tuple(pairs), policy=policy)
    summary = import_public_hpa(
        table,
        out,
        options,
        workers=workers,
        limit=limit,
        shard=shard,
        on_error=on_error,  # type: ignore[arg-type]
        progress=progress,
    )
    typer.echo(str(summary))
    if summary.run.failed:
        typer.echo(f"{summary.run.failed} field(s) failed: see errors.csv in {out}", err=True)
        raise typer.Exit(1)
