"""Classifier heads shared by the CAM model (per pixel) and the cell model (per vector)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Bias-free linear map along dimension 1 of B×F vectors or B×F×H×W maps."""
    if x.ndim == 2:
        return F.linear(x, weight)
    if x.ndim == 4:
        return F.conv2d(x, weight[:, :, None, None])
    raise ValueError(f"expected B×F or B×F×H×W input, got shape {tuple(x.shape)}")


class CosineClassifier(nn.Module):
    """``s · ⟨x/‖x‖, w_c/‖w_c‖⟩`` along dimension 1, for B×F vectors or B×F×H×W maps.

    No bias; ``s`` is learnable and starts at ``scale`` (20 in the reference).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * _linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class ConvClassifier(nn.Module):
    """Bias-free linear classifier along dimension 1 (a 1×1 convolution on maps)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight)


def build_head(kind: str, in_features: int, num_classes: int, scale: float = 20.0) -> nn.Module:
    """``kind`` ∈ {"conv" (linear / 1×1 conv, no bias), "cosine"}."""
    if kind in ("conv", "linear"):
        return ConvClassifier(in_features, num_classes)
    if kind == "cosine":
        return CosineClassifier(in_features, num_classes, scale)
    raise ValueError(f"unknown head {kind!r}; expected 'conv' or 'cosine'")
