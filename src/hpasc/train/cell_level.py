"""Train a cell-level model (cell-crop classifier) on one fold (or all folds) of a config.

:func:`train_fold` lists the cells (training fields of the other folds with their soft or
broadcast labels, validation fields of this fold with image labels), builds the crop streams,
the module and the shared Trainer, fits, and — by default — predicts the fold's validation
cells into ``valid_cells.parquet`` / ``valid_images.parquet`` (what ``hpasc oof`` joins).
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import torch

from hpasc.data.crops import CropStream, load_sources, source_fields, stream_loader, uniform_loader
from hpasc.errors import ConfigError
from hpasc.io.store import Store
from hpasc.paths import anchor
from hpasc.predict.cell_level import predict_cell_valid
from hpasc.runconfig.cell_level import CellLevelConfig
from hpasc.train.cell_level_module import CellLevelModule
from hpasc.train.fitting import (
    absolute_data_root,
    fold_trainer,
    open_fold,
    predict_after_fit,
    write_fold_valid,
)
from hpasc.train.trainer import seed_everything
from hpasc.train.validation import CellMetric, read_solution

log = logging.getLogger("hpasc.train")


class StreamPlacement(L.Callback):
    """Tell crop streams this process's DDP rank and the world size before data is requested.

    The streams split fields between ranks themselves (Lightning adds no sampler to an
    iterable dataset); the train stream also learns the epoch (its shuffle depends on it).
    """

    def __init__(self, train_stream=None, valid_stream=None) -> None:
        self.streams = [s for s in (train_stream, valid_stream) if s is not None]
        self.train_stream = train_stream  # None: training batches come from a sampler

    def setup(self, trainer, pl_module, stage: str) -> None:
        for s in self.streams:
            s.rank, s.world_size = trainer.global_rank, trainer.world_size

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.train_stream is not None:
            self.train_stream.set_epoch(trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.train_stream is not None:
            self.train_stream.set_epoch(trainer.current_epoch)


def _cell_metric(cfg: CellLevelConfig, fold: int):
    """The competition-metric hook when every source with validation fields has a solution."""
    if not cfg.validation.cell_metric:
        return None
    fields, solutions = [], []
    for part in source_fields(cfg.data):
        keep = part.select(fold, "valid")
        if not keep.any():
            continue
        src = part.source
        if not src.solution:
            return None
        masks = Store(anchor(src.masks, cfg.data.root))
        fields += [(f, masks) for f, k in zip(part.ids, keep, strict=True) if k]
        solutions.append(read_solution(anchor(src.solution, cfg.data.root)))
    if not fields:
        return None
    return CellMetric(fields, pd.concat(solutions, ignore_index=True))


def train_fold(
    cfg: CellLevelConfig,
    fold: int,
    run_dir: str | Path,
    resume: bool = False,
    fold_path: str | Path | None = None,
    callbacks: list | None = None,
) -> Path:
    """Train ``fold`` of ``cfg`` into ``run_dir/fold-<fold>`` (or ``fold_path``); returns that folder.

    ``resume`` continues from ``checkpoints/last.ckpt`` when it exists (a fresh start otherwise);
    without it, a fold folder that already holds a checkpoint is an :class:`OutputError`.
    ``callbacks``: extra Lightning callbacks (early stopping, profiling, …).
    """
    cfg = absolute_data_root(cfg)
    out, ckpt = open_fold(run_dir, fold, resume, fold_path, cfg)

    seed_everything(cfg.trainer.seed + fold)
    d = cfg.data
    train_cells = load_sources(d, fold, "train", soft=True)
    valid_cells = load_sources(d, fold, "valid", soft=False)
    if train_cells.n_cells < d.batch_size:
        raise ConfigError(
            f"fold {fold} has {train_cells.n_cells} training cells, fewer than one batch (data.batch_size={d.batch_size})"
        )
    seed = cfg.trainer.seed + 1000 * fold
    pin = torch.cuda.is_available()
    train_stream = None
    if d.sampling == "uniform":
        train_loader = uniform_loader(train_cells, d.batch_size, d.num_workers, seed, pin)
    else:
        train_stream = CropStream(
            train_cells, d.batch_size, train=True, seed=seed,
            buffer_size=d.shuffle_buffer, num_workers=d.num_workers,
        )  # fmt: skip
        train_loader = stream_loader(train_stream, pin)
    valid_stream = CropStream(
        valid_cells, d.valid_batch_size or 2 * d.batch_size, num_workers=d.num_workers
    )
    valid_loader = stream_loader(valid_stream, pin) if valid_cells.n_cells else None

    module = CellLevelModule(
        cfg, fold, _cell_metric(cfg, fold), valid_cells.keys(), load_init=ckpt is None
    )
    callbacks = [StreamPlacement(train_stream, valid_stream), *(callbacks or [])]
    trainer = fold_trainer(cfg, fold, out, "cell-level", callbacks)
    log.info(
        "fold %d: %d training cells (%d fields), %d validation cells -> %s",
        fold, train_cells.n_cells, train_cells.n_fields, valid_cells.n_cells, out,
    )  # fmt: skip
    with warnings.catch_warnings():
        # Lightning warns that an iterable dataset's length may be wrong with several workers;
        # CropStream plans every worker's share, so its length is exact
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt)

    predict_after_fit(trainer, cfg, out, predict_fold_valid)
    return out


#: ``predict_fold_valid(fold_path, device="auto", progress=True)``: write ``valid_cells.parquet``
#: and ``valid_images.parquet`` of a cell-level fold (:func:`~hpasc.train.fitting.write_fold_valid`)
predict_fold_valid = functools.partial(write_fold_valid, predict_cell_valid)
