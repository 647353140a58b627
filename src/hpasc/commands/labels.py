"""`hpasc folds`: multilabel-stratified folds from a label table."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.classes import read_labels
from hpasc.commands._options import with_options
from hpasc.data.folds import FoldsOptions, make_folds, write_folds


@with_options()
def folds(
    labels: Path = typer.Argument(
        ..., help="Label table: Kaggle train.csv (ID,Label) or public-HPA table."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the ID,fold CSV."),
    *,
    options: FoldsOptions,
) -> None:
    """Split fields into stratified folds (MultilabelStratifiedKFold, shuffled) -> ID,fold CSV."""
    result = make_folds(read_labels(labels), **vars(options))
    write_folds(result, output)
    sizes = result["fold"].value_counts().sort_index().tolist()
    typer.echo(f"wrote {output}: {len(result)} fields in {options.n_folds} folds (sizes {sizes})")
