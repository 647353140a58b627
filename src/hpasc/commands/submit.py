"""`hpasc submit`, `hpasc evaluate`, `hpasc submission check`, `hpasc cells average`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hpasc import metric
from hpasc.cells import AverageOptions, average_tables, write_table
from hpasc.commands._options import with_options
from hpasc.errors import InputError
from hpasc.metric import EvaluateOptions
from hpasc.submission import SubmitOptions, check_submission, write_submission

_SHOWN_PROBLEMS = 100


@with_options()
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
    progress: bool = typer.Option(True, help="Show a progress bar."),
    *,
    options: SubmitOptions,
) -> None:
    """Write the Kaggle submission: every cell of every field, all 19 classes, small cells scaled."""
    tables = [*predictions, *(more_predictions or [])]
    summary = write_submission(masks, tables, output, options, progress=progress)
    typer.echo(f"wrote {output}")
    for line in summary.lines():
        typer.echo(f"  {line}")


@with_options()
def evaluate(
    solution: Path = typer.Option(
        ..., "--solution", help="Ground truth CSV: ID,ImageWidth,ImageHeight,PredictionString."
    ),
    submission: Path = typer.Option(..., "--submission", help="Submission CSV to score."),
    as_json: bool = typer.Option(False, "--json", help="Print {mAP, per_class} as JSON."),
    *,
    options: EvaluateOptions,
) -> None:
    """Score a submission with the competition metric (Open Images mAP at IoU 0.6)."""
    result = metric.evaluate(solution, submission, options, progress=not as_json)
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


@with_options()
def average(
    tables: list[Path] = typer.Argument(..., help="Prediction tables (Parquet) to average."),
    output: Path = typer.Option(..., "-o", "--output", help="Averaged table (Parquet) to write."),
    *,
    options: AverageOptions,
) -> None:
    """Average prediction tables cell by cell (joined on image_id, cell_id)."""
    result = average_tables(tables, **vars(options))
    write_table(result, output)
    typer.echo(f"wrote {output}: {len(result)} cells of {result['image_id'].nunique()} fields")
