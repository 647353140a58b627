"""Per-cell prediction tables: build, validate, read, write and average.

A prediction table has one row per cell: ``image_id`` (str), ``cell_id`` (int, the label in the
field's instance mask) and ``p00`` … ``p18`` (float32 probabilities of the 19 classes). Tables of
different models are combined by key (``image_id``, ``cell_id``), never by row order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hpasc.classes import NUM_CLASSES
from hpasc.errors import InputError
from hpasc.io.atomic import atomic_open
from hpasc.options import option, validate

KEY_COLUMNS = ["image_id", "cell_id"]
PROB_COLUMNS = [f"p{k:02d}" for k in range(NUM_CLASSES)]

_EXAMPLES = 5  # keys quoted in an error message


def make_table(image_ids, cell_ids, probs) -> pd.DataFrame:
    """Prediction table from parallel arrays.

    Parameters
    ----------
    image_ids : (n,) field ids (anything convertible to str).
    cell_ids : (n,) integer cell labels.
    probs : (n, 19) probabilities in [0, 1].

    Returns
    -------
    DataFrame with columns ``image_id``, ``cell_id``, ``p00`` … ``p18`` (validated).

    Examples
    --------
    >>> t = make_table(["a", "a"], [1, 2], np.full((2, 19), 0.5))
    >>> list(t.columns[:3])
    ['image_id', 'cell_id', 'p00']
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must have shape (n, {NUM_CLASSES}), got {probs.shape}")
    image_ids = np.asarray(image_ids).astype(str)
    cell_ids = np.asarray(cell_ids)
    if not (image_ids.shape == cell_ids.shape == (probs.shape[0],)):
        raise ValueError(
            f"image_ids {image_ids.shape}, cell_ids {cell_ids.shape} and probs {probs.shape} "
            "must have the same number of rows"
        )
    if cell_ids.size and not np.issubdtype(cell_ids.dtype, np.integer):
        raise ValueError(f"cell_ids must be integers, got dtype {cell_ids.dtype}")
    data = {"image_id": pd.Series(image_ids, dtype=object), "cell_id": cell_ids.astype(np.int64)}
    data.update({c: probs[:, k].astype(np.float32) for k, c in enumerate(PROB_COLUMNS)})
    table = pd.DataFrame(data)
    validate_table(table)
    return table


def validate_table(df: pd.DataFrame, source: str = "") -> None:
    """Check a prediction table; raise :class:`InputError` naming the first problem.

    Checks: columns ``image_id`` (strings), ``cell_id`` (integers), ``p00`` … ``p18`` (float32,
    finite, in [0, 1]); unique (image_id, cell_id). Extra columns are allowed.
    """
    where = f"prediction table {source}: " if source else "prediction table: "
    missing = [c for c in KEY_COLUMNS + PROB_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{where}missing columns {missing} (expected image_id, cell_id, p00..p18)")
    ids = df["image_id"]
    if not pd.api.types.is_string_dtype(ids) or ids.isna().any():  # object columns are inspected
        raise InputError(f"{where}column image_id must hold strings")
    if not pd.api.types.is_integer_dtype(df["cell_id"]):
        raise InputError(f"{where}column cell_id must be integers, got {df['cell_id'].dtype}")
    wrong = [c for c in PROB_COLUMNS if df[c].dtype != np.float32]
    if wrong:
        raise InputError(f"{where}columns {wrong} must be float32 (write them with make_table)")
    probs = df[PROB_COLUMNS].to_numpy()
    bad = ~(np.isfinite(probs) & (probs >= 0) & (probs <= 1))
    if bad.any():
        r, k = np.argwhere(bad)[0]
        raise InputError(
            f"{where}{PROB_COLUMNS[k]} = {probs[r, k]} for ({df['image_id'].iloc[r]!r}, "
            f"{df['cell_id'].iloc[r]}) is not a probability in [0, 1]"
        )
    dup = df.duplicated(KEY_COLUMNS, keep="first")
    if dup.any():
        keys = _format_keys(df.loc[dup, KEY_COLUMNS])
        raise InputError(f"{where}{int(dup.sum())} duplicate (image_id, cell_id) keys, e.g. {keys}")


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Validate and write a table to Parquet atomically (it appears only when complete)."""
    validate_table(df, str(path))
    with atomic_open(path) as fh:
        df.to_parquet(fh, index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a Parquet prediction table."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prediction table {path} not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise InputError(f"cannot read prediction table {path}: {exc}") from exc
    validate_table(df, str(path))
    return df


def _as_table(table: pd.DataFrame | str | os.PathLike, source: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        validate_table(table, source)
        return table
    return read_table(table)


def _format_keys(keys: pd.DataFrame) -> str:
    shown = [f"({i!r}, {c})" for i, c in keys.head(_EXAMPLES).itertuples(index=False)]
    more = f" and {len(keys) - _EXAMPLES} more" if len(keys) > _EXAMPLES else ""
    return ", ".join(shown) + more


@dataclasses.dataclass(frozen=True, kw_only=True)
class AverageOptions:
    """How prediction tables are averaged (:func:`average_tables`; ``hpasc cells average``)."""

    weights: list[float] | None = option(
        None, "Comma-separated weight per table, e.g. 1,1,2 (default: equal)."
    )
    allow_missing: bool = option(
        False, "Average a cell over the tables that have it instead of failing."
    )

    def __post_init__(self) -> None:
        validate(self)


def average_tables(
    tables: Sequence[pd.DataFrame | str | os.PathLike],
    weights: Sequence[float] | None = AverageOptions.weights,
    allow_missing: bool = AverageOptions.allow_missing,
) -> pd.DataFrame:
    """(Weighted) mean of several prediction tables, joined on (image_id, cell_id).

    Parameters
    ----------
    tables : DataFrames or Parquet paths.
    weights : one non-negative weight per table (default: equal); normalised to sum 1 per key.
    allow_missing : if False, a key present in some tables and missing in others is an error;
        if True, such a key gets the weighted mean of the tables that have it.

    :class:`AverageOptions` holds these two (``average_tables(paths, **vars(options))``).

    Returns
    -------
    Prediction table with only the key and probability columns, sorted by key.
    """
    if not tables:
        raise ValueError("average_tables needs at least one table")
    sources = [t if not isinstance(t, pd.DataFrame) else f"#{i + 1}" for i, t in enumerate(tables)]
    frames = [_as_table(t, str(s)) for t, s in zip(tables, sources, strict=True)]
    if weights is None:
        weights = [1.0] * len(frames)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(frames),):
        raise InputError(f"{len(w)} weights given for {len(frames)} prediction tables")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"weights must be non-negative with a positive sum, got {list(weights)}")

    stacked = pd.concat(
        [f[KEY_COLUMNS + PROB_COLUMNS].assign(_table=i) for i, f in enumerate(frames)],
        ignore_index=True,
    )
    table_index = stacked["_table"].to_numpy()
    wrow = w[table_index]
    probs = stacked[PROB_COLUMNS].to_numpy(np.float64) * wrow[:, None]
    weighted = pd.DataFrame(probs, columns=PROB_COLUMNS)
    weighted["_w"] = wrow
    weighted["_n"] = 1
    weighted[KEY_COLUMNS] = stacked[KEY_COLUMNS]
    sums = weighted.groupby(KEY_COLUMNS, sort=True).sum()

    incomplete = sums["_n"].to_numpy() != len(frames)
    if incomplete.any() and not allow_missing:
        keys = sums.index[incomplete].to_frame(index=False)
        present = stacked.groupby(KEY_COLUMNS)["_table"].agg(frozenset)
        lacking = []
        for key in keys.head(_EXAMPLES).itertuples(index=False):
            absent = sorted(set(range(len(frames))) - present[tuple(key)])
            lacking.append(
                f"({key[0]!r}, {key[1]}) missing from {[str(sources[a]) for a in absent]}"
            )
        more = f" and {len(keys) - _EXAMPLES} more" if len(keys) > _EXAMPLES else ""
        raise InputError(
            f"{len(keys)} cells are not in every prediction table: {'; '.join(lacking)}{more} "
            "(predict every table on the same masks, or pass --allow-missing)"
        )
    total = sums["_w"].to_numpy()
    if (total <= 0).any():
        keys = sums.index[total <= 0].to_frame(index=False)
        raise InputError(
            f"{len(keys)} cells appear only in tables of weight 0, e.g. {_format_keys(keys)}"
        )
    mean = np.clip(sums[PROB_COLUMNS].to_numpy() / total[:, None], 0.0, 1.0)  # rounding
    keys = sums.index.to_frame(index=False)
    return make_table(keys["image_id"].to_numpy(), keys["cell_id"].to_numpy(), mean)


def broadcast_image_table(cells: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """A cell table whose rows carry their field's image-level probabilities (``images``: image_id, p00..p18).

    The baseline that ignores cells: every cell of a field gets the same scores.
    """
    missing = sorted(set(cells["image_id"]) - set(images["image_id"]))
    if missing:
        raise InputError(
            f"image-level table lacks {len(missing)} field(s) of the cell table, e.g. {missing[:3]}"
        )
    merged = cells[KEY_COLUMNS].merge(
        images[["image_id", *PROB_COLUMNS]], on="image_id", how="left", validate="many_to_one"
    )
    return merged[[*KEY_COLUMNS, *PROB_COLUMNS]].reset_index(drop=True)
