"""What a training reports on its validation fields.

* classifier metrics of logits against multi-hot labels (mAP over classes, BCE, focal loss);
* the competition metric on validation cells (fields with per-cell ground truth, e.g. synthetic):
  predictions are turned into submission rows with the masks the model saw (no small-cell
  post-processing) and scored with :func:`hpasc.metric.evaluate` against the ground truth of the
  same fields. The masks must have the solution's resolution (true for ``hpasc synth`` data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score

from hpasc.errors import InputError
from hpasc.io.images import read_mask
from hpasc.metric import evaluate
from hpasc.models.losses import focal_loss
from hpasc.submission import SUBMISSION_COLUMNS, field_rows


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean over classes with at least one positive of scikit-learn's average precision.

    (The reference averaged over all 19 classes; a class without positives has no AP, so here it
    is left out rather than counted as NaN/0.) Returns NaN when no class has a positive.
    """
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


def read_solution(path: str) -> pd.DataFrame:
    """A solution CSV (``ID,ImageWidth,ImageHeight,PredictionString``) with string ids."""
    try:
        df = pd.read_csv(path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read solution {path}: {exc}") from exc
    if "ID" not in df.columns or "PredictionString" not in df.columns:
        raise InputError(f"{path}: expected columns ID,ImageWidth,ImageHeight,PredictionString")
    return df


def competition_map(
    table: pd.DataFrame, fields: Sequence[tuple[str, Any]], solution: pd.DataFrame
) -> float:
    """mAP@0.6 of the cell table ``table`` on ``fields`` = [(image_id, mask store), …]."""
    ids = [fid for fid, _ in fields]
    masks = ((fid, read_mask(store, fid)) for fid, store in fields)
    rows = field_rows(masks, table, edge_area_threshold=0, center_area_threshold=0)
    submission = pd.DataFrame(list(rows), columns=SUBMISSION_COLUMNS)
    truth = solution[solution["ID"].isin(set(ids))].reset_index(drop=True)
    return float(evaluate(truth, submission).map)


class CellMetric:
    """Callable hook for a training module: cell table of the validation fields → mAP."""

    def __init__(self, fields: Sequence[tuple[str, Any]], solution: pd.DataFrame) -> None:
        self.fields = list(fields)
        self.solution = solution

    def __call__(self, table: pd.DataFrame) -> float:
        return competition_map(table, self.fields, self.solution)
