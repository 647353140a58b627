"""Losses: focal and BCE for classification, and the cell-consistency criteria.

All take logits. Targets may be soft (probabilities); the focal loss is applied to them
numerically as the reference did (``(1 − p_t)^γ · BCE`` with ``p_t = exp(−BCE)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("focal", "bce")
CONSISTENCY_CRITERIA = ("ce", "focal", "l1", "l2")


def focal_loss_elementwise(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0
) -> torch.Tensor:
    """Per-element focal loss (no α): ``(1 − p_t)^γ · BCE``."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (1.0 - torch.exp(-bce)) ** gamma * bce


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss over all elements (γ = 2 in the reference)."""
    return focal_loss_elementwise(logits, targets, gamma).mean()


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, objective: str = "focal", gamma: float = 2.0
) -> torch.Tensor:
    """``objective`` ∈ {"focal", "bce"}, mean over all elements."""
    if objective == "focal":
        return focal_loss(logits, targets, gamma)
    if objective == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def consistency_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    criterion: str = "ce",
    target_logits: torch.Tensor | None = None,
    gamma: float = 2.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean consistency loss over the ``valid`` entries (any shape, e.g. B×C×K cells).

    ``ce`` / ``focal`` compare ``logits`` with target probabilities; ``l1`` / ``l2`` compare
    logits with ``target_logits`` (stage 1: the clean view's mean logits). Sum over valid entries
    divided by (their number + 1e−6), so no valid entry gives 0. ``weights`` (broadcast to
    ``logits``, e.g. B×1×K from :func:`small_cell_weights`) scale each entry in the sum.
    """
    valid = valid.to(logits.dtype)
    if criterion == "ce":
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    elif criterion == "focal":
        per = focal_loss_elementwise(logits, targets, gamma)
    elif criterion in ("l1", "l2"):
        if target_logits is None:
            raise ValueError(f"criterion {criterion!r} needs target logits")
        diff = logits - target_logits
        per = diff.abs() if criterion == "l1" else diff * diff
    else:
        raise ValueError(
            f"unknown consistency criterion {criterion!r}; expected one of {CONSISTENCY_CRITERIA}"
        )
    # where() keeps NaN/inf of invalid (padded) entries out of the sum and its gradient
    per = torch.where(valid > 0, per, torch.zeros_like(per))
    if weights is not None:
        per = per * weights
    return per.sum() / (valid.sum() + 1e-6)


def small_cell_weights(
    mask: torch.Tensor, counts: torch.Tensor, edge_threshold: float, center_threshold: float
) -> torch.Tensor:
    """Per-cell weights B×1×K of the original's area weighting of the consistency loss:
    ``min(1, area / edge_threshold)`` for a cell touching the border of ``mask``,
    ``min(1, area / center_threshold)`` otherwise (the submission's small-cell rule; a
    threshold ≤ 0 gives weight 1).

    ``mask`` B×H×W with cells 1..K, ``counts`` B×K pixel counts (area at mask resolution).
    """
    b, k = counts.shape
    border = torch.cat([mask[:, 0, :], mask[:, -1, :], mask[:, :, 0], mask[:, :, -1]], dim=1)
    edge = torch.zeros(b, k + 1, dtype=torch.bool, device=mask.device)
    edge.scatter_(1, border.long().clamp(0, k), True)
    edge = edge[:, 1:]
    area = counts.float()

    def scale(threshold: float) -> torch.Tensor:
        if threshold <= 0:
            return torch.ones_like(area)
        return torch.clamp(area / threshold, max=1.0)

    return torch.where(edge, scale(edge_threshold), scale(center_threshold))[:, None, :]
