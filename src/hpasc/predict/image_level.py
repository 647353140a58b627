"""Per-cell predictions of image-level (CAM) runs.

Each field is read whole (no crop) with its mask at the same resolution; the CAM is up-sampled
to the mask and averaged inside every cell; a cell's probability is the sigmoid of that mean
logit. With D4 test-time augmentation the field is decoded once and its 8 dihedral copies are
run in memory; each CAM is mapped back to the original orientation before pooling, and the 8
probabilities are averaged (the reference re-read the whole data set for each of the 8 passes).
Several fold models are averaged the same way (mean of probabilities).

Outputs: a cell table (:mod:`hpasc.cells`: ``image_id, cell_id, p00…p18``) and an image-level
table (``image_id, p00…p18``: sigmoid of the mean CAM). Fields without cells have no cell rows
but do appear in the image-level table.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from hpasc.cells import make_table
from hpasc.classes import NUM_CLASSES
from hpasc.data.augment import D4_SIZE, d4_inverse, d4_transform
from hpasc.data.fields import FieldDataset, FieldTable, collate_fields, load_field_table
from hpasc.io import runs
from hpasc.io.images import list_field_ids
from hpasc.models.cam import CAMClassifier, upsample_cam
from hpasc.models.pooling import cell_mean_pool
from hpasc.predict.base import (
    TTA_MODES,
    PredictOptions,
    _open,
    inference_autocast,
    load_fold_model,
    load_fold_models,
    make_image_table,
    resolve_device,
)
from hpasc.progress import track
from hpasc.runconfig.image_level import load_image_level_config

#: ``load_fold(fold_path, checkpoint=None, device="cpu")``: the network of an image-level fold folder
#: in eval mode and its config (:func:`~hpasc.predict.base.load_fold_model`)
load_fold = functools.partial(load_fold_model, load_image_level_config, CAMClassifier)


@torch.no_grad()
def predict_batch(
    models: Sequence[torch.nn.Module],
    image: torch.Tensor,
    mask: torch.Tensor,
    num_cells: int,
    tta: str | None = "d4",
    upsample: str = "bilinear",
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over models and TTA passes of per-cell and image-level probabilities.

    ``image`` B×4×H×W, ``mask`` B×H×W (cells 1..K). Returns cell probabilities B×K×C, pixel
    counts B×K and image probabilities B×C. ``precision``: see :func:`inference_autocast`.
    """
    tta = tta or "none"
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    passes = range(D4_SIZE) if tta == "d4" else range(1)
    mask = mask.long()
    cells = image_probs = counts = None
    for model in models:
        for k in passes:
            with inference_autocast(image.device, precision):
                cam = model(d4_transform(image, k))
            cam = cam.float()
            # pooling per instance is invariant to moving the CAM back: pool with the true mask
            means, counts = cell_mean_pool(
                d4_inverse(_upsample_like(cam, image, k, upsample), k), mask, num_cells
            )
            p_cells, p_image = torch.sigmoid(means), torch.sigmoid(CAMClassifier.image_logits(cam))
            cells = p_cells if cells is None else cells + p_cells
            image_probs = p_image if image_probs is None else image_probs + p_image
    n = len(models) * len(passes)
    return (cells / n).transpose(1, 2), counts, image_probs / n


def _upsample_like(cam: torch.Tensor, image: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """Up-sample the CAM of D4 copy ``k`` to that copy's size (H and W swap for odd turns)."""
    h, w = image.shape[-2:]
    return upsample_cam(cam, (w, h) if k % 2 else (h, w), mode)


def predict_dataset(
    models: Sequence[torch.nn.Module],
    dataset,
    tta: str | None = "d4",
    upsample: str = "bilinear",
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    precision: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell table and image-level table of every field of a ``FieldDataset`` in predict mode."""
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    image_ids, image_probs = [], []
    cell_image_ids, cell_ids, cell_probs = [], [], []
    for items in track(loader, "predict", enabled=progress):
        # fields of different sizes cannot share a batch: group by shape
        groups: dict[tuple[int, ...], list] = {}
        for it in items:
            groups.setdefault(it["image"].shape, []).append(it)
        for group in groups.values():
            batch = collate_fields(group)
            probs, counts, img = predict_batch(
                models,
                batch["image"].to(device),
                batch["mask"].to(device),
                batch["cell_ids"].shape[1],
                tta,
                upsample,
                precision,
            )
            probs, present, img = probs.cpu().numpy(), (counts > 0).cpu().numpy(), img.cpu().numpy()
            ids = batch["cell_ids"].numpy()
            for b, it in enumerate(group):
                fid = dataset.table.ids[it["index"]]
                image_ids.append(fid)
                image_probs.append(img[b])
                keep = present[b]
                cell_image_ids += [fid] * int(keep.sum())
                cell_ids.append(ids[b][keep])
                cell_probs.append(probs[b][keep])
    cells = make_table(
        cell_image_ids,
        np.concatenate(cell_ids) if cell_ids else np.zeros(0, np.int64),
        np.concatenate(cell_probs) if cell_probs else np.zeros((0, NUM_CLASSES), np.float32),
    )
    order = {fid: i for i, fid in enumerate(dataset.table.ids[r] for r in dataset.rows)}
    images = make_image_table(
        image_ids, np.stack(image_probs) if image_probs else np.zeros((0, NUM_CLASSES))
    )
    images = images.sort_values("image_id", key=lambda s: s.map(order), kind="stable").reset_index(
        drop=True
    )
    cells = cells.sort_values(
        ["image_id", "cell_id"],
        key=lambda s: s.map(order) if s.name == "image_id" else s,
        kind="stable",
    )
    return cells.reset_index(drop=True), images


def predict_valid(
    fold_path: str | Path,
    options: PredictOptions = PredictOptions(),
    images: str | None = None,
    masks: str | None = None,
):
    """Predict the validation fields of one fold with its own model (out-of-fold predictions).

    The fields and their stores come from the fold's config; ``images``/``masks`` replace the
    stores (e.g. masks made at another resolution).
    """

    fold_path = Path(fold_path)
    device = resolve_device(options.device)
    model, cfg = load_fold(fold_path, options.checkpoint, device)
    table = load_field_table(cfg.data, check_images=False)
    if images or masks:
        table = table.with_stores(
            _open(images) or table.stores[0][0], _open(masks) or table.stores[0][1]
        )
    _, valid_rows = table.split(runs.fold_of(fold_path))
    dataset = FieldDataset(table, valid_rows, cfg.data, mode="predict")
    return predict_dataset(
        [model], dataset, options.tta or cfg.predict.tta, options.upsample or cfg.predict.upsample,
        options.batch_size or cfg.predict.batch_size, options.num_workers, device, options.progress,
        options.precision or cfg.predict.precision,
    )  # fmt: skip


def predict_fields(
    fold_paths: Sequence[str | Path],
    images: str,
    masks: str,
    options: PredictOptions = PredictOptions(),
    ids: Sequence[str] | None = None,
):
    """Predict every field of ``images`` (or ``ids``) with the mean of the given fold models."""

    device, models, cfg = load_fold_models(load_fold, fold_paths, options)
    image_store, mask_store = _open(images), _open(masks)
    ids = list(ids) if ids is not None else list_field_ids(image_store)
    dataset = FieldDataset(
        FieldTable.unlabelled(ids, image_store, mask_store),
        np.arange(len(ids)),
        cfg.data,
        mode="predict",
    )
    return predict_dataset(
        models, dataset, options.tta or cfg.predict.tta, options.upsample or cfg.predict.upsample,
        options.batch_size or cfg.predict.batch_size, options.num_workers, device, options.progress,
        options.precision or cfg.predict.precision,
    )  # fmt: skip
