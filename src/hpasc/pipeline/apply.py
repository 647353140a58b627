"""Apply trained runs to a user's own fields: segment, predict every cell, write tables and overlays.

``predict_fields_end_to_end`` is what ``hpasc predict fields`` runs. No labels are needed. Output::

    OUT/masks/<id>.png          cell masks at the fields' own size (the ids of the tables)
    OUT/cells.parquet           hpasc cell table (image_id, cell_id, p00..p18): the mean of the runs
    OUT/cells.csv               the same with class names, area and the class each cell ranks highest in
    OUT/images.parquet          image-level probabilities (mean of the runs that give them)
    OUT/overlays/<id>.png       the field with outlines coloured by class, and a legend
    OUT/manifest.json           what `hpasc report OUT` needs
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpasc.cells import PROB_COLUMNS, average_tables, write_table
from hpasc.classes import CLASS_NAMES
from hpasc.errors import InputError
from hpasc.io import images as imio
from hpasc.io.atomic import atomic_open, atomic_write
from hpasc.io.runs import CELL_LEVEL, RunFolder, open_run
from hpasc.io.store import Store
from hpasc.predict.cell_level import predict_cell_fields
from hpasc.predict.image_level import predict_fields
from hpasc.predict.options import PredictOptions
from hpasc.prepare import CropOptions, ResizeOptions, crop_set, resize_set
from hpasc.segment.sets import SegmentOptions, segment_set
from hpasc.viz import field_overlay, png_bytes, top_class

log = logging.getLogger(__name__)


def predict_fields_end_to_end(
    images: str,
    runs: list[str | Path],
    out: str | Path,
    *,
    segment: SegmentOptions = SegmentOptions(),
    predict: PredictOptions = PredictOptions(),
    size: int | None = None,
    crop_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every field of ``images``, predict its cells with every run, average, write OUT.

    The stages are the library's, with their options objects: :func:`segment_set` with
    ``segment`` (its ``workers`` also resize and crop), :func:`resize_set` to ``size`` (default:
    each run's input size), :func:`crop_set` to ``crop_size`` (cell-level runs; default: their
    crop size) and the runs' prediction with ``predict``.
    """
    out = Path(out)
    if out.is_file():
        raise InputError(f"output {out} is a file; give a folder")
    ids = imio.list_field_ids(Store(images))
    if not ids:
        raise InputError(f"no fields in {images} (expected <id>_red/_green/_blue/_yellow images)")
    groups: dict[bool, list[RunFolder]] = {True: [], False: []}
    for r in runs:  # open every run first: a wrong folder fails before the segmentation
        run = open_run(r)
        groups[run.kind == CELL_LEVEL].append(run)
    masks = out / "masks"
    segment_set(images, masks, segment, overwrite=overwrite, progress=progress)
    options = dataclasses.replace(predict, progress=progress)
    workers = segment.workers
    tables, image_tables = [], []
    redone: set[Path] = set()  # work folders (and crop sets) already redone by this call
    for cell_level, members in ((False, groups[False]), (True, groups[True])):
        for run in members:
            folds = [f.path for f in run.folds]
            # cell-level runs cut crops from fields resized like the image-level runs'
            side = _image_side_for_cells(groups, size) if cell_level else size or run.input_size
            if side is None:
                raise InputError(
                    f"{run.path}: cannot tell the field size it was trained at (its data moved); pass --size"
                )
            work = out / "work" / str(side)
            # --overwrite redoes the masks, so what is made from them is redone too (once)
            redo = overwrite and work not in redone
            for source, name, is_mask in ((images, "images", False), (masks, "masks", True)):
                resized = ResizeOptions(size=side, masks=is_mask, workers=workers)
                resize_set(source, work / name, resized, overwrite=redo, progress=progress)
            if cell_level:
                cs = crop_size or run.input_size
                if cs is None:
                    raise InputError(
                        f"{run.path}: cannot tell its crop size (its crops moved); pass --crop-size"
                    )
                crops = work / f"crops-{cs}"
                redo = overwrite and crops not in redone
                cropping = CropOptions(size=cs, workers=workers)
                crop_set(
                    work / "images", work / "masks", crops, cropping, overwrite=redo,
                    progress=progress,
                )  # fmt: skip
                redone.add(crops)
                cells, image_table = predict_cell_fields(folds, str(crops), options)
            else:
                cells, image_table = predict_fields(
                    folds, str(work / "images"), str(work / "masks"), options
                )
            redone.add(work)
            tables.append(cells)
            image_tables.append(image_table)
            log.info("%s: %d cells in %d fields", run.path, len(cells), len(image_table))
    if not tables:
        raise InputError("give at least one run with --runs")
    cells = average_tables(tables, allow_missing=True)
    write_table(cells, out / "cells.parquet")
    if image_tables:
        img = (
            pd.concat(image_tables)
            .groupby("image_id", sort=True)[PROB_COLUMNS]
            .mean()
            .reset_index()
        )
        with atomic_open(out / "images.parquet") as f:
            img.to_parquet(f, index=False)
    shown = top_class(cells[PROB_COLUMNS].to_numpy())
    named = cells[["image_id", "cell_id"]].copy()
    areas = []
    overlays = Store(out / "overlays")
    mstore = Store(masks)
    for fid in ids:
        mask = imio.read_mask(mstore, fid)
        counts = np.bincount(mask.ravel())
        sel = (cells["image_id"] == fid).to_numpy()
        areas.append(
            pd.Series(counts[cells.loc[sel, "cell_id"].to_numpy()], index=np.flatnonzero(sel))
        )
        classes = dict(
            zip(cells.loc[sel, "cell_id"].astype(int), shown[sel].astype(int), strict=True)
        )
        overlays.write_bytes(
            f"{fid}.png",
            png_bytes(field_overlay(imio.read_field(Store(images), fid), mask, classes)),
        )
    named["area"] = pd.concat(areas).sort_index().to_numpy() if areas else []
    named["shown_class"] = [CLASS_NAMES[k] for k in shown]
    for k, name in enumerate(CLASS_NAMES):
        named[name] = cells[PROB_COLUMNS[k]].to_numpy()
    atomic_write(out / "cells.csv", named.to_csv(index=False))
    manifest = {
        "title": f"predictions for {images}",
        "images": str(images),
        "masks": str(masks),
        "cells": "cells.parquet",
        "runs": [str(r) for r in runs],
    }
    if image_tables:
        manifest["image_level"] = "images.parquet"
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))
    return named


def _image_side_for_cells(groups: dict[bool, list[RunFolder]], size: int | None) -> int | None:
    """Cell-level runs cut crops from fields resized like the image-level runs': use their size."""
    if size:
        return size
    return next((run.input_size for run in groups[False] if run.input_size), None)
