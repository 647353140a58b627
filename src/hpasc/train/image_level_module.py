"""CAM-consistency training of an image-level model (the science only; see ``trainer.py``).

One step (method spec §4.5):

1. optional affine of the heavy view and its mask; CutMix on the heavy batch (and, optionally,
   on the clean batch) with a random box and permutation;
2. ONE forward pass of [clean; heavy]; both CAMs bilinearly up-sampled to the input size; the
   CutMix undone on the up-sampled CAMs, so each map lines up with its own mask again;
3. class loss (focal γ=2 or BCE) on the clean image logits (spatial mean of the clean CAM);
4. consistency loss between the heavy view's per-cell mean logits and targets: the sigmoid of the
   clean view's detached per-cell means (stage 1) or pseudo labels of the cells (stages 2–3);
5. loss = class_weight · class loss + α · consistency loss, α optionally ramped up.

Validation: image-level mAP, BCE and focal on the validation fields, and, when the module has a
``cell_metric`` hook (fields with per-cell ground truth), the competition metric on cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from hpasc.cells import make_table
from hpasc.config import to_dict
from hpasc.data.augment import affine, cutmix, inverse_cutmix, sample_affine, sample_cutmix_boxes
from hpasc.models.cam import build_cam_model, cell_logits, upsample_cam
from hpasc.models.losses import classification_loss, consistency_loss, small_cell_weights
from hpasc.models.pooling import cell_mean_pool
from hpasc.models.weights import without_initial_weights
from hpasc.train.optim import configure_optimizers
from hpasc.train.validation import classification_metrics


def cell_predictions(
    cam: torch.Tensor, mask: torch.Tensor, cell_ids: torch.Tensor, upsample_mode: str = "bilinear"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per field of a batch: (ids of the cells present, their probabilities = sigmoid of the mean
    CAM logit inside the cell). ``mask`` holds cells renumbered 1..K, ``cell_ids`` (B×K) their
    original ids."""
    means, counts = cell_logits(cam, mask, cell_ids.shape[1], upsample_mode)
    probs = torch.sigmoid(means).transpose(1, 2).cpu().numpy()  # B×K×C
    present = (counts > 0).cpu().numpy()
    ids = cell_ids.cpu().numpy()
    return [(ids[b][present[b]], probs[b][present[b]]) for b in range(len(ids))]


def _all_gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


class CAMConsistencyModule(L.LightningModule):
    """LightningModule of an :class:`~hpasc.runconfig.image_level.ImageLevelConfig`.

    ``cell_metric``: optional callable taking a cell table of the validation fields
    (``image_id, cell_id, p00…p18``) and returning the competition mAP. ``load_init=False``
    skips ImageNet / ``init_from`` weights (a resumed run loads its checkpoint instead).
    """

    def __init__(
        self,
        cfg,
        fold: int | None = None,
        cell_metric: Callable | None = None,
        load_init: bool = True,
    ) -> None:
        super().__init__()

        self.save_hyperparameters({"config": to_dict(cfg), "fold": fold})
        self.cfg = cfg
        model_cfg = cfg.model if load_init else without_initial_weights(cfg.model)  # resuming
        self.model = build_cam_model(model_cfg, fold)
        self.cell_metric = cell_metric
        self.use_pseudo = any(s.pseudo_labels for s in cfg.data.sources)
        self._valid_outputs: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ----------------------------------------------------------------------------- training

    def _step_rng(self, batch_idx: int) -> np.random.Generator:
        # one generator per (seed, rank, step, batch): reproducible, unchanged by a resume, and
        # distinct for the batches of one optimiser step under gradient accumulation
        return np.random.default_rng(
            [self.cfg.trainer.seed, self.global_rank, self.global_step, batch_idx]
        )

    def alpha(self) -> float:
        c = self.cfg.consistency
        if c.alpha_ramp <= 0:
            return c.max_alpha
        total = (
            max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        )
        return min(c.max_alpha, c.max_alpha * self.global_step / (total * c.alpha_ramp))

    def _consistency_targets(
        self,
        batch: dict[str, torch.Tensor],
        clean_cam: torch.Tensor,
        mask: torch.Tensor,
        affine_params,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(target probabilities B×C×K, target logits or None, validity B×C×K)."""
        if self.use_pseudo:
            targets = batch["cell_targets"].transpose(1, 2).float()
            return targets, None, torch.isfinite(targets)
        with torch.no_grad():
            cam = clean_cam.detach()
            if affine_params is not None:
                cam = affine(cam, affine_params)
            means, _ = cell_mean_pool(cam, mask, k)
        return torch.sigmoid(means), means, torch.ones_like(means, dtype=torch.bool)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        cfg, aug = self.cfg, self.cfg.augment
        x, xh, y = batch["image"], batch["heavy"], batch["label"].float()
        mask = batch["mask"].long()
        b, _, h, w = x.shape
        k = batch["cell_ids"].shape[1]
        rng = self._step_rng(batch_idx)

        affine_params = None
        if max(aug.angle_limit, aug.shear_limit, aug.scale_limit) > 0:
            affine_params = sample_affine(rng, aug.angle_limit, aug.shear_limit, aug.scale_limit)
            xh = affine(xh, affine_params)
            mask = affine(mask, affine_params, nearest=True)
        boxes_clean = (
            sample_cutmix_boxes(b, h, w, rng, aug.cutmix_repeat)
            if b > 1 and rng.random() < aug.cutmix_p
            else []
        )
        boxes_heavy = (
            sample_cutmix_boxes(b, h, w, rng, aug.cutmix_repeat)
            if b > 1 and rng.random() < aug.cutmix_heavy_p
            else []
        )
        if boxes_clean:
            x = cutmix(x, boxes_clean)
        if boxes_heavy:
            xh = cutmix(xh, boxes_heavy)

        cam = upsample_cam(self.model(torch.cat([x, xh])), (h, w))
        cam_clean, cam_heavy = cam[:b], cam[b:]
        if boxes_clean:
            cam_clean = inverse_cutmix(cam_clean, boxes_clean)
        if boxes_heavy:
            cam_heavy = inverse_cutmix(cam_heavy, boxes_heavy)

        logits = cam_clean.mean(dim=(2, 3))
        class_loss = classification_loss(logits, y, cfg.loss.objective, cfg.loss.focal_gamma)

        heavy_means, counts = cell_mean_pool(cam_heavy, mask, k)
        targets, target_logits, valid = self._consistency_targets(
            batch, cam_clean, mask, affine_params, k
        )
        valid = valid & (counts > 0)[:, None, :]
        if cfg.consistency.targets == "positive_only":
            valid = valid & (y[:, :, None] > 0.5)
        t = cfg.consistency.hard_label_threshold
        if t is not None:
            valid = valid & ((targets >= t) | (targets <= 1.0 - t))
            targets = (targets >= t).float()
        targets = torch.nan_to_num(targets, nan=0.0)
        weights = None
        if cfg.consistency.edge_area_threshold is not None:
            weights = small_cell_weights(
                mask,
                counts,
                cfg.consistency.edge_area_threshold,
                cfg.consistency.center_area_threshold,
            )
        cons_loss = consistency_loss(
            heavy_means,
            targets,
            valid,
            cfg.consistency.criterion,
            target_logits,
            cfg.loss.focal_gamma,
            weights,
        )
        alpha = self.alpha()
        loss = cfg.loss.class_weight * class_loss + alpha * cons_loss
        log = dict(on_step=True, on_epoch=True, batch_size=b, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log("train/class_loss", class_loss, **log)
        self.log("train/consistency_loss", cons_loss, **log)
        self.log(
            "train/alpha", float(alpha), on_step=False, on_epoch=True, batch_size=b, sync_dist=True
        )
        return loss

    # --------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._valid_outputs = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        cam = self.model(batch["image"])
        out: dict[str, Any] = {
            "index": batch["index"].cpu().numpy(),
            "logits": self.model.image_logits(cam.float()).cpu().numpy(),
            "label": batch["label"].cpu().numpy(),
        }
        if self.cell_metric is not None:
            out["cells"] = cell_predictions(
                cam, batch["mask"], batch["cell_ids"], self.cfg.predict.upsample
            )
        self._valid_outputs.append(out)

    def on_validation_epoch_end(self) -> None:
        outputs = [o for part in _all_gather(self._valid_outputs) for o in part]
        self._valid_outputs = []
        if not outputs or self.trainer.sanity_checking:
            return
        index = np.concatenate([o["index"] for o in outputs])
        # DistributedSampler pads with repeats: keep each field once
        _, first = np.unique(index, return_index=True)
        logits = np.concatenate([o["logits"] for o in outputs])[first]
        labels = np.concatenate([o["label"] for o in outputs])[first]
        metrics = classification_metrics(logits, labels, self.cfg.loss.focal_gamma)
        if self.cell_metric is not None:
            metrics["cell_map"] = float(self.cell_metric(self._cell_table(outputs)))
        for name, value in metrics.items():
            # identical on every rank (computed from gathered outputs): syncing is a no-op mean
            self.log(f"valid/{name}", value, prog_bar=name in ("map", "cell_map"), sync_dist=True)

    def _cell_table(self, outputs: list[dict[str, Any]]):
        ids = self.trainer.val_dataloaders.dataset.table.ids
        seen: set[int] = set()
        image_ids, cell_ids, probs = [], [], []
        for o in outputs:
            for idx, (cells, p) in zip(o["index"], o["cells"], strict=True):
                if int(idx) in seen:
                    continue
                seen.add(int(idx))
                image_ids += [ids[int(idx)]] * len(cells)
                cell_ids.append(cells)
                probs.append(p)
        return make_table(
            image_ids,
            np.concatenate(cell_ids) if cell_ids else np.zeros(0, np.int64),
            np.concatenate(probs)
            if probs
            else np.zeros((0, self.cfg.model.num_classes), np.float32),
        )

    # ---------------------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        return configure_optimizers(self, self.cfg.optim, self.cfg.trainer.max_epochs)
