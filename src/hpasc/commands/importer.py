"""`hpasc import public-hpa`: download public-HPA fields into an image set."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.importer import BASE_URL_ENV, DEFAULT_BASE_URL, DEFAULT_URL_TEMPLATE, EXTENSIONS


def public_hpa(
    table: Path = typer.Argument(
        ...,
        help="Public-HPA table (Image, Label_idx, in_trainset, Cellline, ...), e.g. kaggle_2021.tsv.",
    ),
    out: str = typer.Argument(
        ..., help="Output image set: a folder, a folder inside a .zip, or a URL."
    ),
    size: int = typer.Option(
        768, "--size", min=1, help="Output side length in pixels (area resize by default)."
    ),
    also: list[str] = typer.Option(
        None,
        "--also",
        help="SIZE=STORE: also write each field resized from the original to SIZE into STORE "
        "(repeatable; e.g. --size 1536 --also 768=/data/hpa/public-hpa-768).",
    ),
    interpolation: str = typer.Option(
        "auto",
        "--interpolation",
        help="auto (area when shrinking), area, linear (the 7th place's cv2.resize), nearest, cubic.",
    ),
    base_url: str = typer.Option(
        None,
        "--base-url",
        envvar=BASE_URL_ENV,
        help=f"Image server (default {DEFAULT_BASE_URL}); replaces the host of Image URLs.",
    ),
    url_template: str = typer.Option(
        DEFAULT_URL_TEMPLATE,
        "--url-template",
        help="Channel URL; placeholders {base} {path} (Image without host) {id} {color} {ext}.",
    ),
    ext: str = typer.Option(
        "tif.gz", "--ext", help=f"Server file type: {' | '.join(EXTENSIONS)} (tif.gz: 16-bit)."
    ),
    dtype: str = typer.Option(
        "uint8",
        "--dtype",
        help="uint8: convert to 8 bits (hpasc.io.images.to_uint8); keep: source depth.",
    ),
    workers: int = typer.Option(
        8, "--workers", "-j", min=1, help="Fields downloaded at once (processes)."
    ),
    retries: int = typer.Option(
        5, "--retries", min=0, help="Retries per file on transient failures."
    ),
    timeout: float = typer.Option(
        60.0, "--timeout", min=0.001, help="Socket timeout per connect/read, seconds."
    ),
    backoff: float = typer.Option(
        1.0, "--backoff", min=0.0, help="First retry wait in seconds; doubles per retry (jittered)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the back-off jitter."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N fields of the table."),
    shard: str = typer.Option(None, "--shard", help="Process shard i/n of the fields (0-based i)."),
    on_error: str = typer.Option(
        "stop",
        "--on-error",
        help="stop: first failed field stops the run; skip: log it to OUT/errors.csv.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Download public-HPA fields (4 channels each), resize and convert them into OUT/<id>_<color>.png."""
    from hpasc.commands import warn_if_in_memory
    from hpasc.errors import ConfigError
    from hpasc.importer import ImportOptions, RetryPolicy, import_public_hpa

    warn_if_in_memory(out)
    if on_error not in ("stop", "skip"):
        raise ConfigError(f"--on-error must be 'stop' or 'skip', got {on_error!r}")
    pairs = []
    for item in also or []:
        n, sep, url = item.partition("=")
        if not sep or not n.strip().isdigit() or not url:
            raise ConfigError(f"--also must be SIZE=STORE (e.g. 768=out-768), got {item!r}")
        pairs.append((int(n), url))
    options = ImportOptions(
        size=size,
        interpolation=interpolation,
        also=tuple(pairs),
        ext=ext,
        dtype=dtype,  # type: ignore[arg-type]
        base_url=base_url,
        url_template=url_template,
        policy=RetryPolicy(retries=retries, timeout=timeout, backoff=backoff, seed=seed),
    )
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


def register(app: typer.Typer) -> None:
    from hpasc.commands import import_app

    import_app.command("public-hpa")(public_hpa)
