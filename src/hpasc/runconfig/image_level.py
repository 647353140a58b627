"""Configuration schema of image-level (CAM-consistency) models.

Every field that changes behaviour in the reference's config (method spec §4.1) has a place
here; the names are ours (mapping in ``docs/image-level.md``). Paths of data sources are
relative to ``data.root`` (set it on the command line: ``data.root=/data/hpa``); URLs and
absolute paths are used as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpasc.config import load_config
from hpasc.errors import ConfigError
from hpasc.models.cam import CAMModelConfig
from hpasc.models.losses import CONSISTENCY_CRITERIA, OBJECTIVES
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
class SourceConfig:
    """One set of training fields (e.g. Kaggle train, public HPA): images, masks at the same
    resolution, image labels, and optionally fixed folds, pseudo labels and per-cell truth."""

    name: str = ""
    images: str = ""  # image store (folder, x.zip/sub, URL)
    masks: str = ""  # mask store, same resolution as the images
    labels: str = ""  # Kaggle train.csv or public-HPA table
    folds: str | None = None  # ID,fold CSV; None: made from the labels (n_folds, fold_seed)
    pseudo_labels: str | None = None  # cell table (stages 2–3): per-cell targets
    solution: str | None = None  # per-cell ground truth (synthetic data): cell metric in validation


@dataclass
class DataConfig:
    root: str = "."
    sources: list[SourceConfig] = field(default_factory=list)
    n_folds: int = 5
    fold_seed: int = 0
    crop_size: int | None = 512  # training random crop (None: whole field)
    valid_crop_size: int | None = 512  # validation centre crop (None: whole field)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    mean: float = 0.5  # Normalize((x/255 − mean)/std), same for the 4 channels
    std: float = 0.125
    heavy_pixel_aug: list[dict[str, Any]] = field(
        default_factory=list
    )  # albumentations specs, heavy view only
    batch_size: int = 8
    valid_batch_size: int | None = None  # default 2 × batch_size
    num_workers: int = 4


@dataclass
class LossConfig:
    objective: str = "focal"  # image-level class loss: "focal" (γ below) or "bce"
    focal_gamma: float = 2.0
    class_weight: float = 1.0  # weight of the image-level class loss


@dataclass
class ConsistencyConfig:
    max_alpha: float = 1.0  # weight of the consistency loss
    alpha_ramp: float = 0.0  # > 0: α rises linearly over this fraction of all steps
    criterion: str = (
        "ce"  # "ce", "focal" (targets are probabilities), "l1", "l2" (logits; stage 1 only)
    )
    targets: str = "all"  # "all" or "positive_only" (classes of the image label only)
    hard_label_threshold: float | None = None  # p ≥ t → 1, p ≤ 1−t → 0, others ignored
    # the original's per-cell area weighting (unused there): weight min(1, area/threshold) of
    # edge / interior cells, area in training-crop pixels; both set to enable (768 px: 11250, 4500)
    edge_area_threshold: float | None = None
    center_area_threshold: float | None = None


@dataclass
class AugmentConfig:
    """Batch augmentations of the training step (on the device)."""

    cutmix_p: float = 0.0  # CutMix on the clean view
    cutmix_heavy_p: float = 1.0  # CutMix on the heavy view
    cutmix_repeat: int = 1
    drop_cell_p: float = 0.0  # erase random cells from the heavy view (and the mask)
    angle_limit: float = 0.0  # heavy-view affine: rotation U(−a, a) degrees
    shear_limit: float = 0.0  # shear U(−s, s) degrees per axis
    scale_limit: float = 0.0  # scale 1 + U(−l, l)
    p_er: float = 0.0  # green := noisy shifted yellow, label ER only (the original's, unused there)
    p_mt: float = 0.0  # green := noisy shifted red, label microtubules only
    ermt_noise_std: float = 25.0  # Gaussian noise of the synthesised green (grey levels)
    ermt_max_shift: int = 20  # shift U{−s..s} per axis, zero fill


@dataclass
class PredictConfig(PredictSection):
    tta: str | None = "d4"  # "d4" (8 passes, mean of probabilities) or none (null)
    upsample: str = (
        "bilinear"  # CAM → mask resolution: "bilinear" (as in training) or "nearest" (reference)
    )
    batch_size: int = 4


@dataclass
class ImageLevelConfig:
    name: str = ""
    model: CAMModelConfig = field(default_factory=CAMModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


_PROBABILITY = (0, 1)
_POSITIVE = (0, None, {"low_open": True})
_IMAGE_RANGES = {
    "data": {
        "crop_size": (32, None, {"optional": True}),
        "valid_crop_size": (32, None, {"optional": True}),
        "hflip_p": _PROBABILITY,
        "vflip_p": _PROBABILITY,
        "std": _POSITIVE,
    },
    "loss": {"focal_gamma": (0, None), "class_weight": (0, None)},
    "consistency": {"max_alpha": (0, None), "alpha_ramp": _PROBABILITY},
    "augment": {
        "cutmix_p": _PROBABILITY,
        "cutmix_heavy_p": _PROBABILITY,
        "cutmix_repeat": (1, None),
        "drop_cell_p": _PROBABILITY,
        "angle_limit": (0, 180),
        "shear_limit": (0, 90),
        "scale_limit": _PROBABILITY,
    },
    "predict": {"batch_size": (1, None)},
}


def validate(cfg: ImageLevelConfig) -> ImageLevelConfig:
    """Check values the schema types cannot express; raise :class:`ConfigError` naming the key."""
    check_choice(cfg.loss.objective, OBJECTIVES, "loss.objective")
    check_choice(cfg.consistency.criterion, CONSISTENCY_CRITERIA, "consistency.criterion")
    check_choice(cfg.consistency.targets, ("all", "positive_only"), "consistency.targets")
    check_choice(cfg.model.head, ("conv", "cosine"), "model.head")
    check_choice(cfg.predict.upsample, ("bilinear", "nearest"), "predict.upsample")
    for key in ("p_er", "p_mt"):
        if not 0.0 <= getattr(cfg.augment, key) <= 1.0:
            raise ConfigError(f"augment.{key}: {getattr(cfg.augment, key)} must be in [0, 1]")
    thresholds = (cfg.consistency.edge_area_threshold, cfg.consistency.center_area_threshold)
    if (thresholds[0] is None) != (thresholds[1] is None):
        raise ConfigError(
            "consistency.edge_area_threshold and consistency.center_area_threshold: set both or neither"
        )
    t = cfg.consistency.hard_label_threshold
    if t is not None and not 0.5 <= t <= 1.0:
        raise ConfigError(f"consistency.hard_label_threshold: {t} must be in [0.5, 1]")
    check_data(cfg.data, ("images", "masks", "labels"))
    check_sections(cfg, _IMAGE_RANGES)
    check_common(cfg)
    pseudo = [bool(s.pseudo_labels) for s in cfg.data.sources]
    if any(pseudo) and not all(pseudo):
        raise ConfigError("data.sources: set pseudo_labels on every source or on none")
    if any(pseudo) and cfg.consistency.criterion in ("l1", "l2"):
        raise ConfigError(
            f"consistency.criterion {cfg.consistency.criterion!r} compares logits: stage 1 only (no pseudo_labels)"
        )
    return cfg


def load_image_level_config(path: str | Path | None, overrides: list[str] = ()) -> ImageLevelConfig:
    """Read and check an image-level config (YAML + ``a.b=value`` overrides)."""

    return validate(load_config(ImageLevelConfig, path, anchor_overrides(overrides, SourceConfig)))
