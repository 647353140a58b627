"""`hpasc folds`: multilabel-stratified folds from a label table."""

from __future__ import annotations

from pathlib import Path

import typer


def folds(
    labels: Path = typer.Argument(
        ..., help="Label table: Kaggle train.csv (ID,Label) or public-HPA table."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the ID,fold CSV."),
    n_folds: int = typer.Option(5, "--n-folds", min=2, help="Number of folds."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same folds)."),
) -> None:
    """Split fields into stratified folds (MultilabelStratifiedKFold, shuffled) -> ID,fold CSV."""
    from hpasc.classes import read_labels
    from hpasc.data.folds import make_folds, write_folds

    table = read_labels(labels)
    result = make_folds(table, n_folds=n_folds, seed=seed)
    write_folds(result, output)
    sizes = result["fold"].value_counts().sort_index().tolist()
    typer.echo(f"wrote {output}: {len(result)} fields in {n_folds} folds (sizes {sizes})")


def register(app: typer.Typer) -> None:
    app.command("folds")(folds)
