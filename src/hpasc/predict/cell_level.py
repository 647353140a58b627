"""Per-cell predictions of cell-level runs (classifiers of 8-plane cell crops).

Every crop is scored by every given fold model, with D4 test-time augmentation by default: the
batch is decoded once and its 8 dihedral copies are run in memory (the reference re-read the
whole crop set for each pass); the probabilities (sigmoids) of all models and passes are
averaged.

Outputs, as for image-level runs (:mod:`hpasc.predict`): a cell table (:mod:`hpasc.cells`:
``image_id, cell_id, p00…p18``) and an image-level table (``image_id, p00…p18``) whose rows are
*every* predicted field — including fields without cells, which have no cell rows (the
reference dropped them from its crop-model outputs and its ensembling then failed). A field's
image-level probability is the maximum over its cells (a field shows a class when one of its
cells does); 0 for a field without cells.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hpasc.cells import make_table
from hpasc.classes import NUM_CLASSES
from hpasc.data.augment import D4_SIZE, d4_transform
from hpasc.data.crops import CropStream, build_cell_set, load_sources, stream_loader
from hpasc.errors import InputError
from hpasc.io import runs
from hpasc.io.store import Store
from hpasc.models.cell import CellClassifier, crops_to_input
from hpasc.predict.base import (
    TTA_MODES,
    PredictOptions,
    inference_autocast,
    load_fold_model,
    load_fold_models,
    make_image_table,
    resolve_device,
)
from hpasc.prepare import list_crop_ids
from hpasc.progress import track
from hpasc.runconfig.cell_level import load_cell_level_config

#: ``load_cell_fold(fold_path, checkpoint=None, device="cpu")``: the network of a cell-level fold folder
#: in eval mode and its config (:func:`~hpasc.predict.base.load_fold_model`)
load_cell_fold = functools.partial(load_fold_model, load_cell_level_config, CellClassifier)


@torch.no_grad()
def predict_crops(
    models: Sequence[torch.nn.Module],
    crops: torch.Tensor,
    tta: str = "d4",
    precision: str = "auto",
) -> torch.Tensor:
    """Mean over models and TTA passes of the sigmoid of the logits: B×19 probabilities.

    ``crops`` B×8×S×S, uint8 (each model scales them by its ``input_range``) or floats.
    ``precision``: see :func:`hpasc.predict.base.inference_autocast`.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    passes = range(D4_SIZE) if tta == "d4" else range(1)
    total = None
    for model in models:
        cfg = getattr(model, "cfg", None)
        x = crops_to_input(crops, getattr(cfg, "input_range", "unit"))
        for k in passes:
            with inference_autocast(x.device, precision):
                p = torch.sigmoid(model(d4_transform(x, k)).float())
            total = p if total is None else total + p
    return total / (len(models) * len(passes))


def image_probabilities(cell_set, rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(n_fields, 19): per field of ``cell_set``, the maximum over its predicted cells (0 if none)."""
    out = np.zeros((cell_set.n_fields, NUM_CLASSES), np.float32)
    if len(rows):
        np.maximum.at(out, cell_set.cell_field()[rows], probs)
    return out


def predict_cell_set(
    models: Sequence[torch.nn.Module],
    cell_set,
    tta: str = "d4",
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    precision: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell table and image-level table of every cell and field of a :class:`CellSet`."""
    device = torch.device(device)
    stream = CropStream(cell_set, batch_size, train=False, num_workers=num_workers)
    rows, probs = [], []
    for crops, _, row in track(
        stream_loader(stream, device.type == "cuda"), "predict", enabled=progress
    ):
        keep = row >= 0  # padding
        p = predict_crops(models, crops[keep].to(device, non_blocking=True), tta, precision)
        rows.append(row[keep].numpy())
        probs.append(p.cpu().numpy())
    rows_ = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    probs_ = np.concatenate(probs) if probs else np.zeros((0, NUM_CLASSES), np.float32)
    order = np.argsort(rows_, kind="stable")  # field order, then the record's cell order
    rows_, probs_ = rows_[order], probs_[order]
    keys = cell_set.keys(rows_)
    cells = make_table(keys["image_id"].to_numpy(), keys["cell_id"].to_numpy(), probs_)
    images = make_image_table(cell_set.image_ids, image_probabilities(cell_set, rows_, probs_))
    return cells, images


def predict_cell_valid(
    fold_path: str | Path, options: PredictOptions = PredictOptions(), crops: str | None = None
):
    """Predict the validation cells of one fold with its own model (out-of-fold predictions).

    The fields and crop sets come from the fold's config; ``crops`` replaces the crop set (e.g.
    crops cut at another resolution; configs with one source only).
    """
    fold_path = Path(fold_path)
    device = resolve_device(options.device)
    model, cfg = load_cell_fold(fold_path, options.checkpoint, device)
    cell_set = load_sources(
        cfg.data,
        runs.fold_of(fold_path),
        "valid",
        soft=False,
        crops=crops,
        progress=options.progress,
    )
    return predict_cell_set(
        [model], cell_set, options.tta or cfg.predict.tta, options.batch_size or cfg.predict.batch_size,
        options.num_workers, device, options.progress, options.precision or cfg.predict.precision,
    )  # fmt: skip


def predict_cell_fields(
    fold_paths: Sequence[str | Path],
    crops: str,
    options: PredictOptions = PredictOptions(),
    ids: Sequence[str] | None = None,
):
    """Predict every field of the crop set ``crops`` (or ``ids``) with the mean of the fold models."""
    device, models, cfg = load_fold_models(load_cell_fold, fold_paths, options)
    ids = list(ids) if ids is not None else list_crop_ids(Store(crops))
    if not ids:
        raise InputError(f"no crop records (<id>.crops) in {crops}; make them with `hpasc crop`")
    cell_set = build_cell_set(crops, ids, progress=options.progress)
    return predict_cell_set(
        models, cell_set, options.tta or cfg.predict.tta, options.batch_size or cfg.predict.batch_size,
        options.num_workers, device, options.progress, options.precision or cfg.predict.precision,
    )  # fmt: skip
