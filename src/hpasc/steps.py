"""The built-in step kinds of recipes (see :mod:`hpasc.recipe`): each calls one library function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpasc.recipe import TaskContext, step_kind


@step_kind("folds")
def folds_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """labels: label table(s); n_folds; seed -> ${out}/folds.csv"""
    from hpasc.classes import read_labels
    from hpasc.data.folds import make_folds, write_folds

    write_folds(
        make_folds(read_labels(p["labels"]), int(p.get("n_folds", 5)), int(p.get("seed", 0))),
        Path(ctx.out) / "folds.csv",
    )
