"""Train an image-level CAM-consistency model on one fold (or all folds) of a config.

:func:`train_fold` builds the field table, the datasets (training fields of the other folds,
validation fields of this fold), the module and the Trainer, fits, and — by default — predicts
the fold's validation fields into ``valid_cells.parquet`` / ``valid_images.parquet`` (the
out-of-fold predictions that ``hpasc oof`` joins).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from hpasc.data.augment import GreenSynthesis
from hpasc.data.fields import FieldDataset, PseudoLabels, collate_fields, load_field_table
from hpasc.paths import anchor
from hpasc.predict.image_level import predict_valid
from hpasc.runconfig.image_level import ImageLevelConfig
from hpasc.train.callbacks import DatasetEpoch, EpochSampler
from hpasc.train.fitting import (
    absolute_data_root,
    fold_trainer,
    open_fold,
    predict_after_fit,
    write_fold_valid,
)
from hpasc.train.image_level_module import CAMConsistencyModule
from hpasc.train.trainer import seed_everything
from hpasc.train.validation import CellMetric, read_solution

log = logging.getLogger("hpasc.train")


def _pseudo_labels(cfg: ImageLevelConfig):
    paths = list(
        dict.fromkeys(
            anchor(s.pseudo_labels, cfg.data.root) for s in cfg.data.sources if s.pseudo_labels
        )
    )
    if not paths:
        return None
    return PseudoLabels.read(paths)


def _cell_metric(cfg: ImageLevelConfig, table, valid_rows: np.ndarray):
    """The competition-metric hook when every validation field's source has a solution and
    validation sees whole fields; None otherwise."""
    if (
        not cfg.validation.cell_metric
        or cfg.data.valid_crop_size is not None
        or len(valid_rows) == 0
    ):
        return None
    sources = sorted({int(table.source[r]) for r in valid_rows})
    if not all(cfg.data.sources[s].solution for s in sources):
        return None

    solution = pd.concat(
        [read_solution(anchor(cfg.data.sources[s].solution, cfg.data.root)) for s in sources],
        ignore_index=True,
    )
    fields = [(table.ids[r], table.stores[table.source[r]][1]) for r in valid_rows]
    return CellMetric(fields, solution)


def _loaders(cfg: ImageLevelConfig, train_ds, valid_ds, seed: int):
    d = cfg.data
    common = dict(
        num_workers=d.num_workers, collate_fn=collate_fields, pin_memory=torch.cuda.is_available()
    )
    train = DataLoader(
        train_ds, batch_size=d.batch_size, sampler=EpochSampler(len(train_ds), seed),
        drop_last=False, **common,
    )  # fmt: skip
    valid = DataLoader(
        valid_ds, batch_size=d.valid_batch_size or 2 * d.batch_size, shuffle=False, **common
    )
    return train, valid


def train_fold(
    cfg: ImageLevelConfig,
    fold: int,
    run_dir: str | Path,
    resume: bool = False,
    fold_path: str | Path | None = None,
    callbacks: list | None = None,
) -> Path:
    """Train ``fold`` of ``cfg`` into ``run_dir/fold-<fold>`` (or ``fold_path``); returns that folder.

    ``callbacks``: extra Lightning callbacks (early stopping, profiling, …).

    ``resume`` continues from ``checkpoints/last.ckpt`` when it exists (a fresh start otherwise);
    without it, a fold folder that already holds a checkpoint is an :class:`OutputError`.
    """
    cfg = absolute_data_root(cfg)
    out, ckpt = open_fold(run_dir, fold, resume, fold_path, cfg)

    seed_everything(cfg.trainer.seed + fold)
    table = load_field_table(cfg.data)
    train_rows, valid_rows = table.split(fold)
    train_ds = FieldDataset(
        table,
        train_rows,
        cfg.data,
        "train",
        _pseudo_labels(cfg),
        cfg.augment.drop_cell_p,
        seed=cfg.trainer.seed + 1000 * fold,
        green_synthesis=GreenSynthesis(
            cfg.augment.p_er,
            cfg.augment.p_mt,
            cfg.augment.ermt_noise_std,
            cfg.augment.ermt_max_shift,
        ),
    )
    valid_ds = FieldDataset(table, valid_rows, cfg.data, "valid")
    train_loader, valid_loader = _loaders(cfg, train_ds, valid_ds, cfg.trainer.seed + fold)

    module = CAMConsistencyModule(
        cfg, fold, _cell_metric(cfg, table, valid_rows), load_init=ckpt is None
    )
    trainer = fold_trainer(
        cfg, fold, out, "image-level", [DatasetEpoch(train_ds), *(callbacks or [])]
    )
    log.info(
        "fold %d: %d training and %d validation fields -> %s",
        fold,
        len(train_rows),
        len(valid_rows),
        out,
    )
    trainer.fit(module, train_loader, valid_loader if len(valid_ds) else None, ckpt_path=ckpt)

    predict_after_fit(trainer, cfg, out, predict_fold_valid)
    return out


#: ``predict_fold_valid(fold_path, device="auto", progress=True)``: write ``valid_cells.parquet``
#: and ``valid_images.parquet`` of an image-level fold (:func:`~hpasc.train.fitting.write_fold_valid`)
predict_fold_valid = functools.partial(write_fold_valid, predict_valid)
