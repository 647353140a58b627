"""The optimiser section of run configs: :class:`OptimConfig` and its validation.

The schedule itself (:func:`hpasc.train.optim.lr_factor`) is described in ``hpasc.train.optim``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpasc.config import check_ranges
from hpasc.errors import ConfigError

SCHEDULES = ("cos", "exp", "none")


@dataclass
class OptimConfig:
    """Optimiser (any ``torch.optim`` class name) and per-epoch schedule."""

    optimizer: str = "Adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)  # extra optimiser kwargs (betas, ...)
    schedule: str = "cos"  # "cos", "exp" or "none"
    warmup_epochs: int = 5
    warmup_factor: float = 0.1
    gamma: float = 0.95  # "exp" only
    epoch_offset: int = 0  # shifts the schedule (continue a schedule in a new run)


_RANGES = {
    "lr": (0, None, {"low_open": True}),
    "weight_decay": (0, None),
    "warmup_epochs": (0, None),
    "warmup_factor": (0, 1),
    "gamma": (0, None, {"low_open": True}),
    "epoch_offset": (0, None),
}


def validate_optim(cfg: OptimConfig) -> None:
    """Check the optim section before any work starts."""
    check_ranges(cfg, "optim", _RANGES)
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule: {cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
