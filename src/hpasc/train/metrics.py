"""Validation metrics of classifiers (image-level or cell-level logits against multi-hot labels)."""

from __future__ import annotations

import numpy as np
import torch

from hpasc.models.losses import focal_loss


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean over classes with at least one positive of scikit-learn's average precision.

    (The reference averaged over all 19 classes; a class without positives has no AP, so here it
    is left out rather than counted as NaN/0.) Returns NaN when no class has a positive.
    """
    from sklearn.metrics import average_precision_score

    aps = [
        average_precision_score(y_true[:, k], scores[:, k])
        for k in range(y_true.shape[1])
        if y_true[:, k].max() > 0.5
    ]
    return float(np.mean(aps)) if aps else float("nan")


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, gamma: float = 2.0
) -> dict[str, float]:
    """``map``, ``bce`` and ``focal`` of ``logits`` (N×C) against multi-hot ``labels``."""
    lt, yt = (
        torch.as_tensor(logits, dtype=torch.float32),
        torch.as_tensor(labels, dtype=torch.float32),
    )
    return {
        "map": mean_average_precision(labels, logits),
        "bce": float(torch.nn.functional.binary_cross_entropy_with_logits(lt, yt)),
        "focal": float(focal_loss(lt, yt, gamma)),
    }
