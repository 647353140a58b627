"""What the image-level and cell-level run configs share: the validation section and the checks
of their common sections (trainer, optim, model, data, predict)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpasc.config import check_ranges
from hpasc.errors import ConfigError
from hpasc.models.backbone import check_arch
from hpasc.runconfig.optim import validate_optim
from hpasc.runconfig.trainer import validate_trainer

#: ``predict.precision`` values (as Lightning's ``trainer.precision`` names them)
INFERENCE_PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


@dataclass
class ValidationConfig:
    """Validation section of image-level and cell-level configs."""

    cell_metric: bool = True  # competition metric on cells when sources give a solution


@dataclass
class PredictSection:
    """The keys both run configs' ``predict`` sections hold (each adds its own)."""

    checkpoint: str = "last"  # "last", "best" or a path
    after_fit: bool = True  # predict this fold's validation fields when training ends
    precision: str = (
        "auto"  # auto (bf16/fp16 autocast on GPU), 32-true (the reference), bf16-mixed, 16-mixed
    )


def check_choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    """:class:`ConfigError` naming ``key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


_POSITIVE = (0, None, {"low_open": True})
_DATA_RANGES = {
    "n_folds": (2, None),
    "fold_seed": (0, None),
    "batch_size": (1, None),
    "valid_batch_size": (1, None, {"optional": True}),
    "num_workers": (0, None),
}
_MODEL_RANGES = {"cosine_scale": _POSITIVE, "in_chans": (1, None)}


def check_sections(cfg: Any, ranges: dict[str, dict[str, tuple]]) -> None:
    """:func:`hpasc.config.check_ranges` of each section of ``cfg`` named in ``ranges``."""
    for section, fields in ranges.items():
        check_ranges(getattr(cfg, section), section, fields)


def check_common(cfg: Any) -> None:
    """Checks both schemas share: trainer, optim and model sections (``model.arch`` a timm
    name), ``predict.tta`` and ``predict.precision``."""
    validate_trainer(cfg.trainer)
    validate_optim(cfg.optim)
    check_choice(cfg.predict.tta or "none", ("d4", "none"), "predict.tta")
    check_choice(cfg.predict.precision, INFERENCE_PRECISIONS, "predict.precision")
    check_ranges(cfg.model, "model", _MODEL_RANGES)
    check_arch(cfg.model.arch)


def check_data(data: Any, required: tuple[str, ...]) -> None:
    """Checks of a ``data`` section both schemas share: fold count, batch size, workers, and
    the ``required`` paths of every source."""
    check_ranges(data, "data", _DATA_RANGES)
    for i, src in enumerate(data.sources):
        for key in required:
            if not getattr(src, key):
                raise ConfigError(
                    f"data.sources[{i}].{key} is required (a path relative to data.root)"
                )
