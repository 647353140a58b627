"""The cell-level classifier: a timm backbone on 8-plane cell crops, one logit vector per cell.

Input: B×8×S×S crops (planes r,r,g,g,b,b,y,y: a fixed-scale window around the nucleus and the
whole cell resized, for each stain) as floats: in [0, 1] (``input_range: unit``, hpasc's default)
or the raw 0…255 values (``raw``, the reference). Optional per-crop, per-plane InstanceNorm (no
affine, no running statistics; on in the reference). The scale is not irrelevant to it: its eps
(1e-5) is added to the variance, so a dim plane scaled to [0, 1] is damped (a cell of mean grey
level 1: output std ratio 0.54) where the raw values pass unchanged. Then a timm backbone with ``in_chans=8`` and global pooling, then a linear head (with
bias, as timm's own classifier) or the cosine head shared with the CAM model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hpasc.classes import NUM_CLASSES
from hpasc.models.backbone import build_with_init, create_backbone, input_norm
from hpasc.models.heads import build_head

HEADS = ("linear", "cosine")
INPUT_RANGES = ("unit", "raw")


def crops_to_input(x: torch.Tensor, input_range: str = "unit") -> torch.Tensor:
    """uint8 crops (B×8×S×S) → float32: in [0, 1] (``"unit"``) or the raw 0…255 values
    (``"raw"``, as the reference feeds them); floats are passed through."""
    if x.dtype != torch.uint8:
        return x.float()
    if input_range == "raw":
        return x.float()
    if input_range != "unit":
        raise ValueError(f"input_range must be 'unit' or 'raw', got {input_range!r}")
    return x.float() * (1.0 / 255.0)


@dataclass
class CellModelConfig:
    """Network of a cell-level model.

    ``arch`` is any timm model name (reference: ``resnest50d``). ``pretrained`` asks timm for
    ImageNet weights (needs internet; timm adapts the stem to 8 planes). ``init_from`` is a
    checkpoint whose weights start training (``{fold}`` is replaced by the fold index).
    """

    arch: str = "resnest50d"
    pretrained: bool = False
    init_from: str | None = None
    init_strict: bool = True  # False: skip keys the init_from file or the model lacks (original)
    instance_norm_input: bool = True
    input_range: str = "unit"  # uint8 crops → floats: "unit" (/255) or "raw" (0…255, reference)
    head: str = "linear"  # "linear" (with bias) or "cosine"
    cosine_scale: float = 20.0
    in_chans: int = 8
    num_classes: int = NUM_CLASSES
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


class CellClassifier(nn.Module):
    """Optional InstanceNorm of the crop → timm backbone (pooled features) → class head."""

    def __init__(self, cfg: CellModelConfig) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"unknown cell-model head {cfg.head!r}; expected one of {HEADS}")
        self.cfg = cfg
        self.input_norm = input_norm(cfg)
        self.backbone = create_backbone(cfg)
        features = self.backbone.num_features
        if cfg.head == "linear":
            self.head: nn.Module = nn.Linear(features, cfg.num_classes)
        else:
            self.head = build_head("cosine", features, cfg.num_classes, cfg.cosine_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, B×num_classes."""
        return self.head(self.backbone(self.input_norm(x)))


def build_cell_model(cfg: CellModelConfig, fold: int | None = None) -> CellClassifier:
    """The network of ``cfg``, with ``init_from`` weights loaded when set."""
    return build_with_init(CellClassifier, cfg, fold)
