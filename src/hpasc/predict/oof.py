"""Out-of-fold tables: each fold's predictions of its own validation fields, joined.

Every training field is predicted by exactly the one model that did not see it. The joined cell
table is what the next stage trains on (pseudo labels) after averaging several models with
``hpasc cells average``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hpasc.cells import read_table
from hpasc.data.crops import source_fields
from hpasc.data.fields import load_field_table
from hpasc.errors import InputError
from hpasc.io import runs
from hpasc.predict.base import read_image_table
from hpasc.runconfig.cell_level import load_cell_level_config
from hpasc.runconfig.image_level import load_image_level_config

_EXAMPLES = 5


def _expected_fields(fold: runs.Fold) -> tuple[list[str], list[str]]:
    """(all training fields of the fold's config, this fold's validation fields)."""
    if fold.kind == runs.CELL_LEVEL:  # cell-level runs: the fields of their crop sets' labels
        cfg = load_cell_level_config(fold.config_path)
        parts = source_fields(cfg.data)
        every = [f for p in parts for f in p.ids]
        select = (zip(p.ids, p.select(fold.index, "valid"), strict=True) for p in parts)
        return every, [f for pairs in select for f, k in pairs if k]
    cfg = load_image_level_config(fold.config_path)
    table = load_field_table(cfg.data, check_images=False)
    _, valid = table.split(fold.index)
    return table.ids, [table.ids[r] for r in valid]


def join_oof(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the ``valid_cells.parquet`` / ``valid_images.parquet`` of the fold folders found in
    ``paths`` (runs or fold folders) into one cell table and one image-level table.

    Raises :class:`InputError` when a fold's predictions are missing or stale (other fields than
    its validation fields), when a field is predicted twice (two runs of the same folds), or
    when a training field is predicted by no fold.
    """
    all_fields: list[str] = []
    cells, images = [], []
    for fold in runs.find_folds(list(paths)):
        fp = fold.path
        fields, valid = _expected_fields(fold)
        all_fields = all_fields or fields
        cell_path, image_path = fold.valid_cells, fold.valid_images
        redo = f"`hpasc predict {fold.kind} {fp} --split valid`"  # the verb of the run's kind
        if not cell_path.is_file() or not image_path.is_file():
            raise InputError(f"{fp} has no validation predictions ({cell_path.name}); run {redo}")
        img = read_image_table(image_path)
        if set(img["image_id"]) != set(valid):
            raise InputError(
                f"{image_path} does not cover exactly the validation fields of {fp.name}; re-run {redo}"
            )
        cells.append(read_table(cell_path))
        images.append(img)
    image_table = pd.concat(images, ignore_index=True)
    dup = image_table["image_id"][image_table["image_id"].duplicated()]
    if len(dup):
        raise InputError(
            f"{len(dup)} field(s) are predicted by more than one fold, e.g. {dup.tolist()[:_EXAMPLES]} (one run per join)"
        )
    missing = sorted(set(all_fields) - set(image_table["image_id"]))
    if missing:
        raise InputError(
            f"{len(missing)} training field(s) have no out-of-fold prediction, e.g. {missing[:_EXAMPLES]} (train and predict every fold)"
        )
    order = {fid: i for i, fid in enumerate(all_fields)}
    image_table = image_table.sort_values(
        "image_id", key=lambda s: s.map(order), kind="stable"
    ).reset_index(drop=True)
    cell_table = pd.concat(cells, ignore_index=True)
    cell_table = cell_table.sort_values(
        ["image_id", "cell_id"],
        key=lambda s: s.map(order) if s.name == "image_id" else s,
        kind="stable",
    ).reset_index(drop=True)
    return cell_table, image_table
