"""The trainer section of run configs: :class:`TrainerConfig` (engineering only) and its
validation; :mod:`hpasc.train.trainer` turns it into a Lightning ``Trainer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpasc.config import check_ranges
from hpasc.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")


@dataclass
class TrainerConfig:
    """Engineering of a training run (nothing here changes the method)."""

    max_epochs: int = 50
    accelerator: str = "auto"  # auto, cpu, gpu, cuda, mps
    devices: str = "auto"  # "auto", a count ("4") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # auto → ddp when several devices/nodes; or any Lightning strategy name
    precision: str = "auto"  # auto, 32-true, bf16-mixed, 16-mixed
    sync_batchnorm: bool = True  # as the reference under DDP (GPU only)
    seed: int = 0
    deterministic: bool = False
    cudnn_benchmark: bool = False
    log_every_n_steps: int = 50
    limit_train_batches: float = 1.0  # ≤ 1: fraction of the epoch; > 1: number of batches
    limit_val_batches: float = 1.0
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 0
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    logger_project: str = "hpasc"  # W&B project / MLflow experiment
    progress_bar: bool = True
    monitor: str | None = "valid/map"  # metric for best-*.ckpt (None: only last.ckpt)
    monitor_mode: str = "max"


_OPEN = {"low_open": True}
_RANGES = {
    "max_epochs": (1, None),
    "num_nodes": (1, None),
    "seed": (0, None),
    "log_every_n_steps": (1, None),
    "limit_train_batches": (0, None, _OPEN),
    "limit_val_batches": (0, None),
    "check_val_every_n_epoch": (1, None),
    "num_sanity_val_steps": (-1, None),
    "gradient_clip_val": (0, None, {"optional": True}),
    "accumulate_grad_batches": (1, None),
}


def validate_trainer(cfg: TrainerConfig) -> None:
    """Check the trainer section before any work starts (Lightning would fail later, mid-way)."""
    check_ranges(cfg, "trainer", _RANGES)
    unknown = [name for name in cfg.loggers if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"trainer.loggers: {unknown[0]!r} is not one of {', '.join(LOGGERS)}")
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"trainer.monitor_mode: {cfg.monitor_mode!r} is not one of min, max")
    device_count(cfg.devices)


def device_count(devices: str) -> int | None:
    """The number of devices ``trainer.devices`` names (None for ``auto``/``-1``)."""
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text or text.startswith("["):
        return len([d for d in text.strip("[]").split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"trainer.devices: {devices!r} is not 'auto', a count or a list like '0,1'"
        ) from None
