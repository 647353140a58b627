"""Small Lightning callbacks shared by the training entry points."""

from __future__ import annotations

import lightning as L


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
