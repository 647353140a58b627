"""The options of per-cell prediction (image-level and cell-level runs), apart from the
prediction code so that recipes and commands can declare them without loading torch."""

from __future__ import annotations

import dataclasses

from hpasc.options import option, validate

TTA_MODES = ("d4", "none")
UPSAMPLE_MODES = ("bilinear", "nearest")
#: ``predict.precision`` values (as Lightning's ``trainer.precision`` names them)
INFERENCE_PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
_RUNS = " (default: each run's own predict.* setting)."


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """How trained runs predict; ``None`` takes the run's own ``predict.*`` setting."""

    tta: str | None = option(None, "Test-time augmentation: d4 or none" + _RUNS, choices=TTA_MODES)
    upsample: str | None = option(
        None,
        "CAM upsampling (image-level runs): bilinear or nearest" + _RUNS,
        choices=UPSAMPLE_MODES,
    )
    precision: str | None = option(
        None, "Inference precision: auto, 32-true, bf16-mixed, 16-mixed" + _RUNS,
        choices=INFERENCE_PRECISIONS,
    )  # fmt: skip
    checkpoint: str | None = option(None, "Checkpoint: last, best or a path" + _RUNS)
    batch_size: int | None = option(None, "Fields or cells per forward" + _RUNS, min=1)
    num_workers: int = option(0, "Data-loader worker processes.", min=0, flag="--workers")
    device: str = option("auto", "cuda, cuda:N, cpu or auto (CUDA when available).")
    progress: bool = option(True, "Show a progress bar.", records=False)

    def __post_init__(self) -> None:
        validate(self)
