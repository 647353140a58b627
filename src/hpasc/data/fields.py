"""Datasets of whole fields (4-channel images + instance masks) for image-level models.

* :func:`load_field_table` gathers the training fields of every source (Kaggle train, public
  HPA, …): ids, image labels and folds.
* :class:`PseudoLabels` looks per-cell target vectors up by (image_id, cell_id) from a cell
  table (a dict per field, never a dense fields × 19 × 255 array).
* :class:`FieldDataset` yields, per field, the clean view, the heavy view (training), the
  image label, the mask with cells renumbered 1..n (any number of cells) and the field's cell
  ids and per-cell targets; :func:`collate_fields` pads the per-cell parts of a batch.

Augmentation draws come from a generator seeded by (seed, epoch, index), so a run is
reproducible whatever the number of DataLoader workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from hpasc.cells import PROB_COLUMNS, read_table
from hpasc.classes import NUM_CLASSES, read_labels
from hpasc.data.augment import drop_cells, synthesize_green
from hpasc.data.folds import make_folds, read_folds
from hpasc.errors import ConfigError, InputError
from hpasc.io.images import list_field_ids, read_field, read_mask
from hpasc.io.store import Store
from hpasc.paths import anchor

MODES = ("train", "valid", "predict")


# ------------------------------------------------------------------------------ field table


@dataclass
class FieldTable:
    """The fields of one or more sources: ``ids[i]`` from source ``source[i]`` (index into
    ``stores``), multi-hot label ``y[i]`` and fold ``fold[i]``."""

    ids: list[str]
    source: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    stores: list[tuple[Any, Any]]  # (image store, mask store) per source
    source_names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def unlabelled(cls, ids: list[str], images, masks, name: str = "fields") -> FieldTable:
        """Fields of one image store and mask store, without labels or folds (prediction)."""
        n = len(ids)
        return cls(
            list(ids), np.zeros(n, np.int64), np.zeros((n, NUM_CLASSES), np.float32),
            np.full(n, -1, np.int64), [(images, masks)], [name],
        )  # fmt: skip

    def with_stores(self, images, masks) -> FieldTable:
        """The same fields read from other stores (e.g. masks of another resolution)."""
        return FieldTable(
            self.ids,
            self.source,
            self.y,
            self.fold,
            [(images, masks)] * len(self.stores),
            self.source_names,
        )

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the training and validation fields of ``fold``."""
        if fold not in set(self.fold.tolist()):
            raise ConfigError(
                f"fold {fold} does not exist (folds: {sorted(set(self.fold.tolist()))})"
            )
        return np.flatnonzero(self.fold != fold), np.flatnonzero(self.fold == fold)


def load_field_table(data_cfg, check_images: bool = True) -> FieldTable:
    """Read labels and folds of every source of ``data_cfg`` (a ``DataConfig``).

    Folds come from the source's fold table, or are made per source from its labels with
    ``make_folds(labels, n_folds, fold_seed)`` (the reference stratified Kaggle train and public
    HPA separately). A labelled field without images is an :class:`InputError`.
    """
    if not data_cfg.sources:
        raise ConfigError("data.sources is empty: list at least one source (images, masks, labels)")
    ids: list[str] = []
    source, ys, folds, stores, names = [], [], [], [], []
    for i, src in enumerate(data_cfg.sources):
        root = data_cfg.root
        labels = read_labels(anchor(src.labels, root))
        if src.folds:
            table = read_folds(anchor(src.folds, root))
            fold_of = dict(zip(table["ID"].astype(str), table["fold"].astype(int), strict=True))
            missing = [f for f in labels.ids if f not in fold_of]
            if missing:
                raise InputError(
                    f"fold table {src.folds} lacks {len(missing)} labelled field(s), e.g. {missing[:3]}"
                )
            f = np.array([fold_of[k] for k in labels.ids], dtype=np.int64)
        else:
            f = make_folds(labels, data_cfg.n_folds, data_cfg.fold_seed)["fold"].to_numpy()
        images = Store(anchor(src.images, root))
        masks = Store(anchor(src.masks, root))
        if check_images:
            have = set(list_field_ids(images))
            missing = [k for k in labels.ids if k not in have]
            if missing:
                raise InputError(
                    f"{len(missing)} labelled field(s) of {src.labels} have no images in {images}, e.g. {missing[:3]}"
                )
        ids += labels.ids
        source.append(np.full(len(labels), i, dtype=np.int64))
        ys.append(labels.y)
        folds.append(f)
        stores.append((images, masks))
        names.append(src.name or f"source{i}")
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise InputError(f"field ids appear in several sources: {list(dup[:5])}")
    return FieldTable(
        ids, np.concatenate(source), np.concatenate(ys), np.concatenate(folds), stores, names
    )


# ---------------------------------------------------------------------------- pseudo labels


class PseudoLabels:
    """Per-cell target vectors of a cell table, looked up by (image_id, cell_id).

    ``fields``: every field the table's predictions covered (the ``images.parquet`` beside an
    out-of-fold table), those without cells included. With it, a training field it lacks is
    an error up front; without it, only a field that has cells but no rows is (when read).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        source: str = "cell table",
        fields: Iterable[str] | None = None,
    ) -> None:
        missing = {"image_id", "cell_id", *PROB_COLUMNS} - set(table.columns)
        if missing:
            raise InputError(f"{source}: missing column(s) {sorted(missing)}")
        self.source = source
        probs = table[list(PROB_COLUMNS)].to_numpy(np.float32)
        cells = table["cell_id"].to_numpy(np.int64)
        order = np.lexsort((cells, table["image_id"].to_numpy()))
        image_ids = table["image_id"].to_numpy()[order]
        cells, probs = cells[order], probs[order]
        starts = (
            np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
            if len(order)
            else np.array([], int)
        )
        ends = np.r_[starts[1:], len(order)]
        self._by_field: dict[str, tuple[np.ndarray, np.ndarray]] = {
            str(image_ids[s]): (cells[s:e], probs[s:e]) for s, e in zip(starts, ends, strict=True)
        }
        self.covered = None if fields is None else set(map(str, fields)) | set(self._by_field)

    @classmethod
    def read(cls, paths: str | list[str]) -> PseudoLabels:
        """The cell table(s) at ``paths``; ``images.parquet`` beside each, when all have one,
        tells which fields were predicted (zero-cell ones included)."""
        paths = [paths] if isinstance(paths, str) else list(paths)
        tables = [read_table(p) for p in paths]
        images = [Path(p).with_name("images.parquet") for p in paths]
        fields = None
        if all(q.is_file() for q in images):
            fields = set().union(
                *(pd.read_parquet(q, columns=["image_id"]).image_id for q in images)
            )
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        return cls(table, source=", ".join(map(str, paths)), fields=fields)

    def __contains__(self, image_id: str) -> bool:
        """The field is known: it has rows, or (with ``fields``) it was predicted."""
        return image_id in (self._by_field if self.covered is None else self.covered)

    def fields(self) -> set[str]:
        return set(self._by_field)

    def targets(self, image_id: str, cell_ids: np.ndarray) -> np.ndarray:
        """(n, 19) float32 targets of ``cell_ids`` of ``image_id``; a cell absent from the table
        is an :class:`InputError` naming it. A field without cells needs no rows (the original
        keeps such fields; their targets are empty)."""
        cell_ids = np.asarray(cell_ids, dtype=np.int64)
        if image_id not in self._by_field:
            if len(cell_ids) == 0:
                return np.zeros((0, NUM_CLASSES), np.float32)
            raise InputError(f"{self.source}: no pseudo labels for field {image_id!r}")
        known, probs = self._by_field[image_id]
        pos = np.searchsorted(known, cell_ids)
        pos = np.minimum(pos, max(len(known) - 1, 0))
        ok = (known[pos] == cell_ids) if len(known) else np.zeros(len(cell_ids), bool)
        if not ok.all():
            raise InputError(
                f"{self.source}: field {image_id!r} has no pseudo labels for cell(s) {cell_ids[~ok][:5].tolist()} "
                "(were the pseudo labels predicted with the same masks?)"
            )
        return probs[pos]


# ---------------------------------------------------------------------------------- masks


def renumber_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells of ``mask`` renumbered 1..n in ascending id order (int32), and their original ids."""
    mask = np.asarray(mask)
    if mask.size == 0:
        return mask.astype(np.int32), np.zeros(0, np.int64)
    present = np.flatnonzero(np.bincount(mask.ravel().astype(np.int64)))
    present = present[present > 0]
    lut = np.zeros(int(mask.max()) + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[mask], present.astype(np.int64)


# ------------------------------------------------------------------------------ transforms


def build_albumentations(specs: list[dict[str, Any]]):
    """An albumentations ``Compose`` from ``[{"type": "GaussNoise", "p": 0.5, ...}, ...]``."""
    out = []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("type", None)
        cls = getattr(A, str(name), None)
        if cls is None:
            raise ConfigError(
                f"augmentation {name!r} is not an albumentations transform (spec {spec})"
            )
        try:
            out.append(cls(**spec))
        except Exception as exc:
            raise ConfigError(f"augmentation {name}: bad parameters {spec}: {exc}") from exc
    return A.Compose(out)


def geometric_transform(mode: str, crop: int | None, hflip_p: float = 0.0, vflip_p: float = 0.0):
    """Crop and flips applied to image and mask together (``mode`` train: random crop and flips;
    valid: centre crop; predict: nothing). Fields smaller than the crop are zero-padded."""
    ops: list = []
    if crop and mode != "predict":
        ops.append(A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0))
        ops.append(A.RandomCrop(crop, crop) if mode == "train" else A.CenterCrop(crop, crop))
    if mode == "train":
        if hflip_p > 0:
            ops.append(A.HorizontalFlip(p=hflip_p))
        if vflip_p > 0:
            ops.append(A.VerticalFlip(p=vflip_p))
    return A.Compose(ops)


def normalize(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """H×W×C 8-bit values → C×H×W float32 ``(x/255 − mean)/std`` (the reference's Normalize)."""
    x = image.astype(np.float32) * (1.0 / 255.0)
    x -= mean
    x *= 1.0 / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# --------------------------------------------------------------------------------- dataset


class FieldDataset(Dataset):
    """Fields ``rows`` of a :class:`FieldTable` as training, validation or prediction items.

    Items are dicts: ``image`` (4×H×W float32), ``mask`` (H×W int32, cells 1..n),
    ``cell_ids`` (n original ids), ``label`` (19), ``index``; in train mode also ``heavy``
    (the heavy view) and, with pseudo labels, ``cell_targets`` (n×19).
    """

    def __init__(
        self,
        table: FieldTable,
        rows: np.ndarray | list[int],
        data_cfg,
        mode: str = "train",
        pseudo: PseudoLabels | None = None,
        drop_cell_p: float = 0.0,
        seed: int = 0,
        green_synthesis=None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.table = table
        self.rows = np.asarray(rows, dtype=np.int64)
        self.mode = mode
        self.mean, self.std = data_cfg.mean, data_cfg.std
        crop = data_cfg.crop_size if mode == "train" else data_cfg.valid_crop_size
        self.geometric = geometric_transform(mode, crop, data_cfg.hflip_p, data_cfg.vflip_p)
        self.heavy_pixel = (
            build_albumentations(data_cfg.heavy_pixel_aug)
            if mode == "train" and data_cfg.heavy_pixel_aug
            else None
        )
        self.pseudo = pseudo
        self.drop_cell_p = drop_cell_p if mode == "train" else 0.0
        # ER/MT green synthesis (hpasc.data.augment.GreenSynthesis), training only
        self.green = green_synthesis if mode == "train" and green_synthesis is not None else None
        self.seed = seed
        self.epoch = 0
        if pseudo is not None:
            # zero-cell fields have no rows: without the table's field list they are told
            # apart from missing ones only when read (PseudoLabels.targets)
            missing = [table.ids[r] for r in self.rows if table.ids[r] not in pseudo]
            if missing and pseudo.covered is not None:
                raise InputError(
                    f"{pseudo.source}: no pseudo labels for {len(missing)} field(s), e.g. {missing[:3]}"
                )

    def set_epoch(self, epoch: int) -> None:
        """Training draws depend on the epoch: call before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def image_id(self, i: int) -> str:
        return self.table.ids[self.rows[i]]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw field (H×W×4 uint8) and its mask (H×W)."""
        row = self.rows[i]
        images, masks = self.table.stores[self.table.source[row]]
        image = read_field(images, self.table.ids[row], dtype="uint8")
        return image, read_mask(masks, self.table.ids[row], shape=image.shape[:2])

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(self.rows[i])])

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.read(i)
        local, cell_ids = renumber_cells(mask)
        rng = self._rng(i)
        row = self.rows[i]
        label = self.table.y[row].astype(np.float32)
        if self.green is not None and self.green.enabled:
            image, label = synthesize_green(image, label, rng, self.green)
        seeded = random.Random(int(rng.integers(2**63)))
        self.geometric.set_random_state(rng, seeded)
        out = self.geometric(image=image, mask=local)
        image, local = out["image"], out["mask"]
        item: dict[str, Any] = {
            "index": int(row),
            "label": label,
            "cell_ids": cell_ids,
        }
        if self.mode == "train":
            heavy = image
            if self.heavy_pixel is not None:
                self.heavy_pixel.set_random_state(rng, seeded)
                heavy = self.heavy_pixel(image=heavy)["image"]
            if self.drop_cell_p > 0 and rng.random() < self.drop_cell_p:
                heavy, local = drop_cells(heavy, local, rng)
            item["heavy"] = normalize(heavy, self.mean, self.std)
            if self.pseudo is not None:
                item["cell_targets"] = self.pseudo.targets(self.table.ids[row], cell_ids)
        item["image"] = normalize(image, self.mean, self.std)
        item["mask"] = np.ascontiguousarray(local, dtype=np.int32)
        return item


def collate_fields(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; per-cell parts are padded to the batch's largest cell count:
    ``cell_ids`` (B×K, 0 = padding), ``cell_targets`` (B×K×19, NaN padding)."""
    k = max((len(it["cell_ids"]) for it in items), default=0)
    batch: dict[str, Any] = {
        "index": torch.as_tensor([it["index"] for it in items]),
        "label": torch.as_tensor(np.stack([it["label"] for it in items])),
        "image": torch.as_tensor(np.stack([it["image"] for it in items])),
        "mask": torch.as_tensor(np.stack([it["mask"] for it in items])),
    }
    ids = np.zeros((len(items), k), dtype=np.int64)
    for b, it in enumerate(items):
        ids[b, : len(it["cell_ids"])] = it["cell_ids"]
    batch["cell_ids"] = torch.as_tensor(ids)
    if "heavy" in items[0]:
        batch["heavy"] = torch.as_tensor(np.stack([it["heavy"] for it in items]))
    if "cell_targets" in items[0]:
        targets = np.full((len(items), k, NUM_CLASSES), np.nan, dtype=np.float32)
        for b, it in enumerate(items):
            targets[b, : len(it["cell_targets"])] = it["cell_targets"]
        batch["cell_targets"] = torch.as_tensor(targets)
    return batch
