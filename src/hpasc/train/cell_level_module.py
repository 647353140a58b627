"""Training of a cell-level model on cell crops (the science only; see ``trainer.py``).

One step (method spec §5.5):

1. the uint8 crops become floats (in [0, 1], or 0…255 with ``model.input_range: raw``); one
   random element of D4 for the whole batch; optionally one random affine transform;
2. CutMix with probability ``cutmix_p``: a box and a permutation; λ is recomputed from the
   clipped box (the fraction of each crop that stays its own) and the targets are mixed by it,
   ``λ·y + (1 − λ)·y[π]`` — for BCE the same as the reference's ``λ·BCE(y) + (1 − λ)·BCE(y[π])``;
3. BCE (or focal) against the (soft) targets, averaged per crop; optionally the hardest fraction
   of the batch is left out; mean.

Validation, once per epoch over all validation cells: cell-level mAP, BCE and focal against the
image labels broadcast to the cells and, with a ``cell_metric`` callable (fields with per-cell
ground truth), the competition metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from hpasc.cells import make_table
from hpasc.config import to_dict
from hpasc.data.augment import (
    CutMixBox,
    affine,
    cutmix,
    d4_transform,
    sample_affine,
    sample_cutmix_box,
)
from hpasc.models.cell import build_cell_model, crops_to_input
from hpasc.models.losses import focal_loss_elementwise
from hpasc.models.weights import without_initial_weights
from hpasc.train.optim import configure_optimizers
from hpasc.train.validation import classification_metrics


def mix_targets(y: torch.Tensor, box: CutMixBox) -> torch.Tensor:
    """Targets of a CutMix batch: ``λ·y + (1 − λ)·y[perm]`` with the box's (clipped) λ."""
    perm = torch.as_tensor(box.perm, device=y.device)
    return box.lam * y + (1.0 - box.lam) * y[perm]


def per_sample_loss(
    logits: torch.Tensor, targets: torch.Tensor, objective: str = "bce", gamma: float = 2.0
) -> torch.Tensor:
    """Loss of every sample (mean over classes), soft targets allowed."""
    if objective == "bce":
        per = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    elif objective == "focal":
        per = focal_loss_elementwise(logits.float(), targets, gamma)
    else:
        raise ValueError(f"unknown objective {objective!r}; expected 'bce' or 'focal'")
    return per.mean(dim=1)


def keep_easiest(losses: torch.Tensor, exclude: float) -> torch.Tensor:
    """The ``1 − exclude`` fraction of ``losses`` with the smallest values (at least one)."""
    if exclude <= 0:
        return losses
    keep = max(1, int(round(len(losses) * (1.0 - exclude))))
    return torch.topk(losses, keep, largest=False).values


class CellLevelModule(L.LightningModule):
    """LightningModule of a :class:`~hpasc.runconfig.cell_level.CellLevelConfig`.

    Batches are ``(crops uint8 B×8×S×S, targets B×19, rows B)`` from
    :class:`hpasc.data.crops.CropStream`; rows ``-1`` are padding (validation only).
    ``cell_metric``: optional callable taking a cell table of the validation cells
    (``image_id, cell_id, p00…p18``) and returning the competition mAP; ``valid_keys`` maps
    validation rows to ``image_id, cell_id`` (a DataFrame), needed with ``cell_metric``.
    ``load_init=False`` skips ImageNet / ``init_from`` weights (a resumed run loads its
    checkpoint instead).
    """

    def __init__(
        self,
        cfg,
        fold: int | None = None,
        cell_metric: Callable | None = None,
        valid_keys=None,
        load_init: bool = True,
    ) -> None:
        super().__init__()

        # (ignore: Lightning compares every init argument with the dict, a DataFrame cannot be)
        self.save_hyperparameters(
            {"config": to_dict(cfg), "fold": fold},
            ignore=["cell_metric", "valid_keys", "load_init"],
        )
        self.cfg = cfg
        model_cfg = cfg.model if load_init else without_initial_weights(cfg.model)  # resuming
        self.model = build_cell_model(model_cfg, fold)
        self.cell_metric = cell_metric
        self.valid_keys = valid_keys
        self._valid_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of crops (uint8, or floats already in the model's input range)."""
        return self.model(crops_to_input(x, self.cfg.model.input_range))

    # ----------------------------------------------------------------------------- training

    def _step_rng(self) -> np.random.Generator:
        # one generator per (seed, rank, step): reproducible, and unchanged by a resume
        return np.random.default_rng([self.cfg.trainer.seed, self.global_rank, self.global_step])

    def augment(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """D4, affine (when a limit is set) and CutMix of a batch (floats) and its targets, in
        the original's order."""
        aug = self.cfg.augment
        if aug.d4:
            x = d4_transform(x, int(rng.integers(8)))
        if max(aug.angle_limit, aug.shear_limit, aug.scale_limit) > 0:
            x = affine(x, sample_affine(rng, aug.angle_limit, aug.shear_limit, aug.scale_limit))
        b, _, h, w = x.shape
        if b > 1 and aug.cutmix_p > 0 and rng.random() < aug.cutmix_p:
            box = sample_cutmix_box(b, h, w, rng, aug.cutmix_alpha)
            x, y = cutmix(x, [box]), mix_targets(y, box)
        return x, y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        x, y = self.augment(
            crops_to_input(x, self.cfg.model.input_range), y.float(), self._step_rng()
        )
        logits = self.model(x)
        losses = per_sample_loss(logits, y, self.cfg.loss.objective, self.cfg.loss.focal_gamma)
        loss = keep_easiest(losses, self.cfg.loss.exclude_hardest).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    # --------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._valid_outputs = []

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, rows = batch
        logits = self(x).float()
        self._valid_outputs.append((rows.detach(), logits.detach(), y.detach().float()))

    def on_validation_epoch_end(self) -> None:
        outputs, self._valid_outputs = self._valid_outputs, []
        if not outputs or self.trainer.sanity_checking:
            return
        rows, logits, labels = (torch.cat(part) for part in zip(*outputs, strict=True))
        if self.trainer.world_size > 1:
            # every rank holds the same number of (padded) rows: gather and flatten
            rows, logits, labels = (
                self.all_gather(t).flatten(0, 1) for t in (rows, logits, labels)
            )
        keep = rows >= 0
        rows = rows[keep].cpu().numpy()
        logits, labels = logits[keep].cpu().numpy(), labels[keep].cpu().numpy()
        metrics = classification_metrics(logits, labels, self.cfg.loss.focal_gamma)
        if self.cell_metric is not None:
            metrics["cell_map"] = float(self.cell_metric(self._cell_table(rows, logits)))
        for name, value in metrics.items():
            self.log(f"valid/{name}", value, prog_bar=name in ("map", "cell_map"), sync_dist=False)

    def _cell_table(self, rows: np.ndarray, logits: np.ndarray):
        keys = self.valid_keys.iloc[rows]
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return make_table(keys["image_id"].to_numpy(), keys["cell_id"].to_numpy(), probs)

    # ---------------------------------------------------------------------------- optimiser

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.cfg.optim, self.cfg.trainer.max_epochs)
