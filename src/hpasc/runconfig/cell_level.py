"""Configuration schema of cell-level models (classifiers of 8-plane cell crops).

Every field of the reference's crop-model config (method spec §5.1) that changes behaviour has
a place here; the mapping is in ``docs/cell-level.md``. Paths of data sources are relative to
``data.root`` (set it on the command line: ``data.root=/data/hpa``); URLs and absolute paths are
used as given. Optimiser, schedule and trainer sections are the ones of the image-level models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpasc.config import load_config
from hpasc.data.crops import SAMPLINGS, CropSourceConfig
from hpasc.errors import ConfigError
from hpasc.models.cell import HEADS, INPUT_RANGES, CellModelConfig
from hpasc.models.losses import OBJECTIVES
from hpasc.paths import anchor_overrides
from hpasc.runconfig.common import (
    PredictSection,
    ValidationConfig,
    check_choice,
    check_common,
    check_data,
    check_sections,
)
from hpasc.runconfig.optim import OptimConfig
from hpasc.runconfig.trainer import TrainerConfig


@dataclass
class CellDataConfig:
    root: str = "."
    sources: list[CropSourceConfig] = field(default_factory=list)
    n_folds: int = 5
    fold_seed: int = 0
    batch_size: int = 128
    valid_batch_size: int | None = None  # default 2 × batch_size
    num_workers: int = 4
    # training order: "stream" (fields in shuffled order, cells through a per-worker buffer of
    # shuffle_buffer cells; whole batches per worker) or "uniform" (a RandomSampler over all
    # cells, random access into the crop sets; the reference's sampling)
    sampling: str = "stream"
    shuffle_buffer: int = 2048  # cells held per worker for shuffling (memory: × 8·S² bytes)


@dataclass
class CellLossConfig:
    objective: str = "bce"  # "bce" (reference) or "focal"; both take soft targets
    focal_gamma: float = 2.0  # also the γ of the validation focal metric
    exclude_hardest: float = 0.0  # leave out this fraction of each batch with the largest loss


@dataclass
class CellAugmentConfig:
    """Batch augmentations of the training step (on the device)."""

    d4: bool = True  # one random element of D4 (rotations/flips) per batch
    angle_limit: float = 0.0  # affine per batch (the original's, unused there): rotation U(−a, a)°
    shear_limit: float = 0.0  # shear U(−s, s) degrees per axis
    scale_limit: float = 0.0  # scale 1 + U(−l, l)
    cutmix_p: float = 1.0  # probability of CutMix per batch
    cutmix_alpha: float = 1.0  # λ ~ Beta(α, α) sizes the box; the loss uses the clipped box's λ


@dataclass
class CellPredictConfig(PredictSection):
    tta: str = "d4"  # "d4" (8 passes, mean of probabilities) or "none"
    batch_size: int = 256


@dataclass
class CellLevelConfig:
    name: str = ""
    model: CellModelConfig = field(default_factory=CellModelConfig)
    data: CellDataConfig = field(default_factory=CellDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: CellLossConfig = field(default_factory=CellLossConfig)
    augment: CellAugmentConfig = field(default_factory=CellAugmentConfig)
    predict: CellPredictConfig = field(default_factory=CellPredictConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


_RANGES = {
    "data": {"shuffle_buffer": (1, None)},
    "loss": {"focal_gamma": (0, None)},
    "augment": {"cutmix_alpha": (0, None, {"low_open": True})},
    "predict": {"batch_size": (1, None)},
}


def validate(cfg: CellLevelConfig) -> CellLevelConfig:
    """Check values the schema types cannot express; raise :class:`ConfigError` naming the key."""
    check_choice(cfg.loss.objective, OBJECTIVES, "loss.objective")
    check_choice(cfg.model.head, HEADS, "model.head")
    check_choice(cfg.model.input_range, INPUT_RANGES, "model.input_range")
    check_choice(cfg.data.sampling, SAMPLINGS, "data.sampling")
    if not 0.0 <= cfg.loss.exclude_hardest < 1.0:
        raise ConfigError(f"loss.exclude_hardest: {cfg.loss.exclude_hardest} must be in [0, 1)")
    if not 0.0 <= cfg.augment.cutmix_p <= 1.0:
        raise ConfigError(f"augment.cutmix_p: {cfg.augment.cutmix_p} must be in [0, 1]")
    check_data(cfg.data, ("crops", "labels"))
    check_sections(cfg, _RANGES)
    check_common(cfg)
    for i, src in enumerate(cfg.data.sources):
        if src.solution and not src.masks:
            raise ConfigError(
                f"data.sources[{i}].solution needs masks (the masks the crops were cut from)"
            )
    return cfg


def load_cell_level_config(path: str | Path | None, overrides: list[str] = ()) -> CellLevelConfig:
    """Read and check a cell-level config (YAML + ``a.b=value`` overrides)."""

    return validate(
        load_config(CellLevelConfig, path, anchor_overrides(overrides, CropSourceConfig))
    )
