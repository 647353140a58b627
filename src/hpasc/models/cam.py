"""The image-level CAM classifier: a timm backbone, a per-pixel class head, mean-pooled logits.

``CAMClassifier(x)`` returns the class activation map (B×19×h×w at stride 32 for EfficientNet);
:meth:`CAMClassifier.image_logits` is its spatial mean. Trained on image labels, the CAM
averaged inside a cell mask scores that cell (``hpasc.models.pooling``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpasc.classes import NUM_CLASSES
from hpasc.models.backbone import build_with_init, create_backbone, input_norm
from hpasc.models.heads import build_head
from hpasc.models.pooling import cell_mean_pool

UPSAMPLE_MODES = ("bilinear", "nearest")


@dataclass
class CAMModelConfig:
    """Network of an image-level model.

    ``arch`` is any timm model name. ``pretrained`` asks timm for ImageNet weights (needs
    internet). ``init_from`` is a checkpoint whose weights start training (``{fold}`` is replaced
    by the fold index; the 1536-px model starts from the 768-px model of the same fold).
    """

    arch: str = "efficientnet_b2"
    pretrained: bool = False
    init_from: str | None = None
    instance_norm_input: bool = True
    remove_maxpool: bool = False  # the original's option (unused there): stem maxpool → identity
    remove_first_stride2: bool = False  # the original's option (unused there): first conv stride 1
    head: str = "conv"  # "conv" (bias-free 1×1 convolution) or "cosine"
    cosine_scale: float = 20.0
    in_chans: int = 4
    num_classes: int = NUM_CLASSES
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


class CAMClassifier(nn.Module):
    """Optional InstanceNorm of the input → timm ``forward_features`` → per-pixel class head."""

    def __init__(self, cfg: CAMModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_norm = input_norm(cfg)
        self.backbone = create_backbone(cfg)
        self.head = build_head(
            cfg.head, self.backbone.num_features, cfg.num_classes, cfg.cosine_scale
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation map, B×C×h×w (logits per pixel of the feature grid)."""
        features = self.backbone.forward_features(self.input_norm(x))
        return self.head(features)

    @staticmethod
    def image_logits(cam: torch.Tensor) -> torch.Tensor:
        """Image logits = spatial mean of the CAM (B×C)."""
        return cam.mean(dim=(-2, -1))


def build_cam_model(cfg: CAMModelConfig, fold: int | None = None) -> CAMClassifier:
    """The network of ``cfg``, with ``init_from`` weights loaded when set."""
    return build_with_init(CAMClassifier, cfg, fold)


def upsample_cam(cam: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """CAM → ``size`` in float32: bilinear (``align_corners=False``, as in training) or nearest
    (the reference's inference)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    cam = cam.float()
    if tuple(cam.shape[-2:]) == tuple(size):
        return cam
    if mode == "nearest":
        return F.interpolate(cam, size=tuple(size), mode="nearest")
    return F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)


def cell_logits(
    cam: torch.Tensor, mask: torch.Tensor, num_cells: int, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell mean CAM logits (B×C×K) and pixel counts (B×K): the CAM is up-sampled to the
    mask's size and averaged inside each cell (ids 1..K)."""
    up = upsample_cam(cam, tuple(mask.shape[-2:]), mode)
    return cell_mean_pool(up, mask.long(), num_cells)
