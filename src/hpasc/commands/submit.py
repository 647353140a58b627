"""`hpasc submit`, `hpasc evaluate`, `hpasc submission check`, `hpasc cells average`."""

from __future__ import annotations

from pathlib import Path

import typer

_SHOWN_PROBLEMS = 100


def _weights(text: str | None) -> list[float] | None:
    from hpasc.errors import InputError

    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise InputError(
            f"--weights {text!r}: expected comma-separated numbers, e.g. 1,1,2"
        ) from None


def submit(
    masks: str = typer.Option(
        ..., "--masks", help="Original-size instance masks (<id>.png): folder, zip or URL."
    ),
    predictions: list[Path] = typer.Option(
        ..., "--predictions", help="Prediction table(s) (Parquet); more may follow as arguments."
    ),
    more_predictions: list[Path] = typer.Argument(
        None, help="Further prediction tables, averaged with the first.", show_default=False
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Submission CSV to write."),
    weights: str = typer.Option(
        None, "--weights", help="Comma-separated weight per table, e.g. 1,1,2 (default: equal)."
    ),
    edge_area_threshold: float = typer.Option(
        80_000, help="Cells touching the border: confidence x min(1, area / T); T <= 0: off."
    ),
    center_area_threshold: float = typer.Option(
        32_000, help="Interior cells: confidence x min(1, area / T); T <= 0: off."
    ),
    scale_thresholds_with_size: bool = typer.Option(
        False, help="Scale both thresholds by field area / 2048^2."
    ),
    min_confidence: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Leave out triples whose confidence is below this."
    ),
    allow_missing: bool = typer.Option(
        False, help="Average a cell over the tables that have it instead of failing."
    ),
    strict: bool = typer.Option(
        False, help="A mask cell without a prediction is an error (default: left out, counted)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Write the Kaggle submission: every cell of every field, all 19 classes, small cells scaled."""
    from hpasc.submission import write_submission

    summary = write_submission(
        masks,
        [*predictions, *(more_predictions or [])],
        output,
        weights=_weights(weights),
        allow_missing=allow_missing,
        progress=progress,
        edge_area_threshold=edge_area_threshold,
        center_area_threshold=center_area_threshold,
        scale_thresholds_with_size=scale_thresholds_with_size,
        min_confidence=min_confidence,
        strict=strict,
    )
    typer.echo(f"wrote {output}")
    for line in summary.lines():
        typer.echo(f"  {line}")


def evaluate(
    solution: Path = typer.Option(
        ..., "--solution", help="Ground truth CSV: ID,ImageWidth,ImageHeight,PredictionString."
    ),
    submission: Path = typer.Option(..., "--submission", help="Submission CSV to score."),
    mode: str = typer.Option(
        "mask", "--mode", help="IoU of masks ('mask') or of their boxes ('box')."
    ),
    iou: float = typer.Option(0.6, "--iou", help="IoU threshold of a match, in (0, 1]."),
    as_json: bool = typer.Option(False, "--json", help="Print {mAP, per_class} as JSON."),
) -> None:
    """Score a submission with the competition metric (Open Images mAP at IoU 0.6)."""
    import json

    from hpasc import metric
    from hpasc.errors import InputError

    if mode not in metric.MODES:
        raise InputError(f"--mode {mode!r}: choose one of {', '.join(metric.MODES)}")
    if not 0.0 < iou <= 1.0:
        raise InputError(f"--iou {iou}: choose a threshold in (0, 1]")
    result = metric.evaluate(solution, submission, iou=iou, mode=mode, progress=not as_json)
    if as_json:
        per_class = {str(k): v for k, v in sorted(result.per_class.items())}
        typer.echo(json.dumps({"mAP": result.map, "per_class": per_class}))
    else:
        typer.echo(result.table())


def check(
    csv_path: Path = typer.Argument(..., help="Submission CSV to check."),
    masks: str = typer.Option(
        None, "--masks", help="Original-size masks: check IDs and sizes against them too."
    ),
) -> None:
    """Check a submission file; list each problem with its row; exit non-zero when any."""
    from hpasc.errors import InputError
    from hpasc.submission import check_submission

    problems = check_submission(csv_path, masks=masks)
    if not problems:
        typer.echo(f"{csv_path}: OK")
        return
    for p in problems[:_SHOWN_PROBLEMS]:
        typer.echo(f"{csv_path}: {p}")
    if len(problems) > _SHOWN_PROBLEMS:
        typer.echo(f"... and {len(problems) - _SHOWN_PROBLEMS} more")
    plural = "s" if len(problems) != 1 else ""
    raise InputError(f"{len(problems)} problem{plural} in {csv_path} (listed above)")


def average(
    tables: list[Path] = typer.Argument(..., help="Prediction tables (Parquet) to average."),
    output: Path = typer.Option(..., "-o", "--output", help="Averaged table (Parquet) to write."),
    weights: str = typer.Option(
        None, "--weights", help="Comma-separated weight per table, e.g. 1,1,2 (default: equal)."
    ),
    allow_missing: bool = typer.Option(
        False, help="Average a cell over the tables that have it instead of failing."
    ),
) -> None:
    """Average prediction tables cell by cell (joined on image_id, cell_id)."""
    from hpasc.cells import average_tables, write_table

    result = average_tables(tables, weights=_weights(weights), allow_missing=allow_missing)
    write_table(result, output)
    typer.echo(f"wrote {output}: {len(result)} cells of {result['image_id'].nunique()} fields")


def register(app: typer.Typer) -> None:
    from hpasc.commands import cells_app, submission_app

    app.command("submit")(submit)
    app.command("evaluate")(evaluate)
    submission_app.command("check")(check)
    cells_app.command("average")(average)
