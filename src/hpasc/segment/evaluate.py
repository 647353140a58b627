"""Instance-mask agreement: one-to-one matching of labelled objects at an IoU threshold."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def match_counts(pred: np.ndarray, true: np.ndarray, iou: float = 0.6) -> tuple[int, int, int]:
    """Count one-to-one matches between two label maps.

    Parameters
    ----------
    pred, true : (H, W) integer arrays
        Instance label maps, 0 = background. Labels need not be consecutive.
    iou : float
        A pair matches when its intersection over union is at least ``iou``. Above 0.5 a match is
        necessarily unique; at or below 0.5 the largest one-to-one matching is taken.

    Returns
    -------
    (matched, n_pred, n_true) : tuple of int
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {true.shape}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    p = _dense_labels(pred.ravel())
    t = _dense_labels(true.ravel())
    p_area = np.bincount(p)
    t_area = np.bincount(t)
    n_pred = int(np.count_nonzero(p_area[1:]))
    n_true = int(np.count_nonzero(t_area[1:]))
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    both = (p > 0) & (t > 0)
    n_t = len(t_area)
    pair = p[both].astype(np.int64) * n_t + t[both]
    pairs, inter = np.unique(pair, return_counts=True)
    pi, ti = np.divmod(pairs, n_t)
    union = p_area[pi] + t_area[ti] - inter
    ok = inter >= iou * union
    pi, ti, score = pi[ok], ti[ok], (inter[ok] / union[ok])
    if len(pi) == 0:
        return 0, n_pred, n_true
    if iou > 0.5:
        return int(len(pi)), n_pred, n_true
    # IoU <= 0.5 admits several candidates per object: solve the assignment on the candidates only.
    ru, r = np.unique(pi, return_inverse=True)
    cu, c = np.unique(ti, return_inverse=True)
    cost = np.zeros((len(ru), len(cu)))
    cost[r, c] = -1.0 - score  # prefer more matches, then higher IoU
    rows, cols = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[rows, cols] < 0)), n_pred, n_true


def match_f1(pred: np.ndarray, true: np.ndarray, iou: float = 0.6) -> tuple[float, float, float]:
    """F1, precision and recall of predicted instances against true ones, matched at ``iou``.

    Objects are paired one-to-one when their IoU is at least ``iou``; intersections come from one
    pass over the two label maps (no per-object masks). Two empty maps score (1, 1, 1); an empty
    prediction against a non-empty truth scores precision 0.

    Examples
    --------
    >>> a = np.zeros((4, 4), int); a[:2, :2] = 1; a[2:, 2:] = 2
    >>> match_f1(a, a)
    (1.0, 1.0, 1.0)
    """
    matched, n_pred, n_true = match_counts(pred, true, iou)
    if n_pred == 0 and n_true == 0:
        return 1.0, 1.0, 1.0
    precision = matched / n_pred if n_pred else 0.0
    recall = matched / n_true if n_true else 0.0
    f1 = 2 * matched / (n_pred + n_true)
    return f1, precision, recall


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    """Non-negative integer labels small enough for bincount (sparse large ids are compressed)."""
    if labels.dtype.kind not in "iub":
        raise ValueError(f"label maps must be integer arrays, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.intp)
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"label maps must not hold negative labels, found {low}")
    if high < (1 << 22):
        return labels
    ids, inverse = np.unique(labels, return_inverse=True)
    return inverse + int(ids[0] != 0)
