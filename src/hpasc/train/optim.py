"""Optimiser and learning-rate schedule shared by every model.

The schedule is per epoch, as in the reference: for epoch ``e`` (0-based) of ``E``,
``cos``: lr₀·½(1 + cos(π e/E)); ``exp``: lr₀·γ^e; ``none``: lr₀; times a linear warm-up factor
``f + (1 − f)·e/W`` during the first ``W`` epochs. With lr₀ = 1e-3, E = 50, W = 5, f = 0.1:
epoch 0 → 1.0e-4, epoch 4 → 8.1e-4, epoch 5 → 9.76e-4, epoch 49 → 9.9e-7.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hpasc.errors import ConfigError
from hpasc.runconfig.optim import SCHEDULES, OptimConfig


def lr_factor(epoch: int, cfg: OptimConfig, max_epochs: int) -> float:
    """Multiplier of lr₀ at ``epoch`` (see the module docstring)."""
    e = epoch + cfg.epoch_offset
    if cfg.schedule == "cos":
        factor = 0.5 * (1.0 + math.cos(math.pi * e / max_epochs))
    elif cfg.schedule == "exp":
        factor = cfg.gamma**e
    elif cfg.schedule == "none":
        factor = 1.0
    else:
        raise ConfigError(
            f"optim.schedule: unknown schedule {cfg.schedule!r}; expected one of {SCHEDULES}"
        )
    if e < cfg.warmup_epochs:
        t = e / cfg.warmup_epochs
        factor *= cfg.warmup_factor * (1.0 - t) + t
    return factor


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """``torch.optim.<cfg.optimizer>(params, lr=…, weight_decay=…, **cfg.params)``."""
    cls = getattr(torch.optim, cfg.optimizer, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"optim.optimizer: {cfg.optimizer!r} is not a torch.optim optimiser (e.g. Adam, AdamW, SGD)"
        )
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **cfg.params)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_epochs: int):
    """A per-epoch ``LambdaLR`` implementing :func:`lr_factor`."""
    lr_factor(0, cfg, max_epochs)  # validates the schedule name early
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg, max_epochs))


def configure_optimizers(module, cfg: OptimConfig, max_epochs: int) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns: optimiser + per-epoch schedule."""
    optimizer = build_optimizer(module.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, max_epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
