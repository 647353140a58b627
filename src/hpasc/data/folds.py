"""Multilabel-stratified folds, as the reference: ``MultilabelStratifiedKFold(shuffle=True)``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from hpasc.classes import LabelTable
from hpasc.errors import InputError
from hpasc.io.atomic import atomic_write
from hpasc.options import option, validate


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoldsOptions:
    """How fields are split into folds (:func:`make_folds`)."""

    n_folds: int = option(5, "Number of folds.", min=2)
    seed: int = option(0, "Random seed (same seed, same folds).", min=0)

    def __post_init__(self) -> None:
        validate(self)


def make_folds(
    labels: LabelTable,
    n_folds: int = FoldsOptions.n_folds,
    seed: int = FoldsOptions.seed,
) -> pd.DataFrame:
    """Assign every field a fold in ``0..n_folds-1``; same seed, same folds.

    Returns a frame ``ID,fold`` in the label table's order. The defaults are
    :class:`FoldsOptions`' (``make_folds(labels, **vars(options))``).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(labels) < n_folds:
        raise InputError(
            f"{labels.source or 'label table'}: {len(labels)} fields cannot fill {n_folds} folds"
        )
    folds = np.full(len(labels), -1, dtype=np.int64)
    # iterative-stratification loads scikit-learn (about 1 s): only the folds step needs it, not
    # every recipe task process that imports the step kinds
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(labels)), labels.y)):
        folds[valid] = k
    return pd.DataFrame({"ID": labels.ids, "fold": folds})


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a ``ID,fold`` table."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"fold table not found: {path} (make one with `hpasc folds LABELS -o {path}`)"
        )
    df = pd.read_csv(path, dtype={"ID": str})
    if not {"ID", "fold"} <= set(df.columns):
        raise InputError(f"{path}: expected columns 'ID,fold'")
    return df


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    atomic_write(path, folds.to_csv(index=False))
