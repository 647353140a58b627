"""Small Lightning callbacks and the epoch-seeded sampler shared by the training entry points.

Resume gives the uninterrupted result: every random draw of epoch ``k`` derives from
``(seed, k)`` — the field order (:class:`EpochSampler`), the augmentations (datasets seeded by
epoch and index, modules by global step) and everything drawn from the global generators
(dropout, drop-path, worker seeds: :class:`EpochSeed`) — so a run resumed at epoch ``k`` from
``last.ckpt`` draws what the run never killed drew.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch

from hpasc.io.atomic import atomic_write


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for epoch ``epoch`` of a run seeded ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class EpochSampler(torch.utils.data.Sampler[int]):
    """A random order of ``range(n)`` that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch (also the first of a resumed run),
    unlike a DataLoader's ``shuffle`` generator, which restarts from its seed on resume.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter(order.tolist())


class EpochSeed(L.Callback):
    """Seed Python, NumPy and torch (and DataLoader workers) at every epoch start from
    ``(seed, epoch)``: a resumed epoch starts from the same generator states as in a run that
    was never stopped (Lightning's checkpoints do not hold them)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        L.seed_everything(epoch_seed(self.seed, trainer.current_epoch), workers=True, verbose=False)


class DatasetEpoch(L.Callback):
    """Tell a dataset the current epoch (its augmentation draws are seeded by epoch and index).

    Set at fit start too, so a resumed run's first epoch already uses the right value when the
    DataLoader workers are created.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_fit_start(self, trainer, pl_module) -> None:
        self.dataset.set_epoch(trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


class ForgetUnfinishedSteps(L.Callback):
    """On resume, drop the ``metrics.csv`` rows of steps after the checkpoint: the killed run
    logged part of an epoch that the resumed run trains again (its rows would appear twice)."""

    def __init__(self, csv_file: str | Path) -> None:
        self.csv_file = Path(csv_file)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and trainer.is_global_zero:
            drop_rows_from(self.csv_file, trainer.global_step)


def drop_rows_from(csv_file: Path, step: int) -> None:
    """Rewrite a Lightning ``metrics.csv`` keeping the rows logged before global ``step``."""
    if not csv_file.is_file():
        return
    with csv_file.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "step" not in rows[0]:
        return
    col = rows[0].index("step")
    kept = [rows[0]] + [r for r in rows[1:] if not r[col] or float(r[col]) < step]
    if len(kept) == len(rows):
        return
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(kept)
    atomic_write(csv_file, text.getvalue())
