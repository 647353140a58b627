"""The competition metric: Open Images instance-segmentation challenge mAP at IoU 0.6.

Rules (TF Object Detection API ``OpenImagesChallengeEvaluator``, as used by the hosts):

* Per field, only classes present in its ground truth are scored. Detections of other classes,
  on fields without ground truth, or on fields absent from the solution are ignored (not false
  positives). Fields absent from the submission keep their ground truth: all misses.
* Ground-truth pairs whose mask is ``-1`` are skipped. In ``mask`` mode an empty ground-truth
  mask is not counted (the reference scores it as a box that nothing can match and leaves it out
  of the count); in ``box`` mode it counts as an empty box that nothing matches.
* A detection with an empty mask or a confidence ≤ −10 is dropped; at most 10,000 detections per
  (field, class) are kept, the highest-ranked.
* Per (field, class), detections are ranked by descending confidence with a **stable** sort:
  equal confidences keep submission order (row order, then triple order). Each is matched to the
  ground-truth cell of that class with the highest IoU (the first on ties): a true positive iff
  IoU ≥ the threshold and that cell is not matched yet, otherwise a false positive.
* AP per class: VOC all-point AP over all fields pooled, ranked again by descending confidence,
  stably (fields in order of first appearance in the submission, then the per-field ranking). A
  class with ground truth and no detection has AP 0. mAP = mean over classes with ground truth.
* ``mask`` mode: IoU = intersection / union counted exactly in pixels (integers; the reference's
  float32 sums could flip a decision within ~1e-7 of the threshold). ``box`` mode: IoU of the
  tight boxes of the masks, normalised by the image size (the hosts' post-competition analysis).

IoU comes from intersecting column-major run lists of the decoded RLE strings (each distinct
string decoded once per field), never from full-size masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hpasc.classes import CLASS_NAMES, NUM_CLASSES
from hpasc.errors import InputError, OptionError
from hpasc.options import merged, option, validate
from hpasc.progress import track
from hpasc.rle import MaskStringError, RunLists, decode_mask_strings
from hpasc.submission import CsvRow, iter_csv_rows, parse_size

MAX_DETECTIONS = 10_000
MIN_SCORE = -10.0  # detections with a confidence at or below this are dropped
MODES = ("mask", "box")


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """How a submission is scored (:func:`evaluate`)."""

    iou: float = option(0.6, "IoU threshold of a match, in (0, 1].")
    mode: str = option("mask", "IoU of masks ('mask') or of their boxes ('box').", choices=MODES)

    def __post_init__(self) -> None:
        validate(self)
        if not 0.0 < self.iou <= 1.0:  # an open interval: not expressible as [min, max]
            raise OptionError(f"iou {self.iou} (--iou): choose a threshold in (0, 1]")


@dataclass(frozen=True)
class MetricResult:
    """mAP, AP per class with ground truth, and per-class counts (all 19 classes)."""

    map: float
    per_class: dict[int, float]
    n_gt: dict[int, int]
    n_detections: dict[int, int] = field(default_factory=dict)

    def table(self) -> str:
        """Per-class table (index, name, #GT, #scored detections, AP) and the mAP."""
        lines = [f"{'':>3} {'class':<42} {'#GT':>7} {'#det':>9} {'AP':>7}"]
        for k in range(NUM_CLASSES):
            ap = f"{self.per_class[k]:.4f}" if k in self.per_class else "-"
            lines.append(
                f"{k:>3} {CLASS_NAMES[k]:<42} {self.n_gt.get(k, 0):>7} "
                f"{self.n_detections.get(k, 0):>9} {ap:>7}"
            )
        lines.append(f"mAP over {len(self.per_class)} classes: {self.map:.4f}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- geometry on runs


def run_intersections(a: RunLists, b: RunLists) -> np.ndarray:
    """Pixel counts of the pairwise intersections of two sets of run-length masks.

    Returns an (a.count, b.count) int64 matrix.
    """
    out = np.zeros(a.count * b.count, dtype=np.float64)
    order = np.argsort(b.starts, kind="stable")
    b_starts, b_ends, b_owner = b.starts[order], b.ends[order], b.owner[order]
    # Sorted disjoint runs are searchable as one list; overlapping masks (rare) one by one.
    if np.all(b_starts[1:] >= b_ends[:-1]):
        groups = [slice(None)]
    else:
        groups = [b_owner == j for j in range(b.count)]
    for g in groups:
        gs, ge, go = b_starts[g], b_ends[g], b_owner[g]
        lo = np.searchsorted(ge, a.starts, side="right")  # first run ending after a's start
        hi = np.searchsorted(gs, a.ends, side="left")  # runs starting before a's end
        n = np.maximum(hi - lo, 0)
        total = int(n.sum())
        if total == 0:
            continue
        ai = np.repeat(np.arange(a.starts.size), n)
        bi = lo[ai] + np.arange(total) - np.repeat(np.cumsum(n) - n, n)
        overlap = np.minimum(a.ends[ai], ge[bi]) - np.maximum(a.starts[ai], gs[bi])
        # float64 sums of integers below 2**53 are exact
        out += np.bincount(a.owner[ai] * b.count + go[bi], weights=overlap, minlength=out.size)
    return out.reshape(a.count, b.count).astype(np.int64)


def runs_boxes(runs: RunLists, height: int, width: int) -> np.ndarray:
    """Tight boxes [ymin, xmin, ymax, xmax] of run-length masks, normalised by the image size.

    As the reference: ``[min(y)/H, min(x)/W, (max(y)+1)/H, (max(x)+1)/W]``; zeros when empty.
    """
    boxes = np.zeros((runs.count, 4))
    if runs.starts.size == 0:
        return boxes
    first_col, last_col = runs.starts // height, (runs.ends - 1) // height
    crosses = first_col != last_col  # a run crossing a column covers rows H-1 and 0
    top = np.where(crosses, 0, runs.starts % height)
    bottom = np.where(crosses, height - 1, (runs.ends - 1) % height)
    present, seg = np.unique(runs.owner, return_index=True)
    boxes[present, 0] = np.minimum.reduceat(top, seg) / height
    boxes[present, 1] = np.minimum.reduceat(first_col, seg) / width
    boxes[present, 2] = (np.maximum.reduceat(bottom, seg) + 1) / height
    boxes[present, 3] = (np.maximum.reduceat(last_col, seg) + 1) / width
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [ymin, xmin, ymax, xmax] boxes, with the reference's arithmetic."""
    a = a.reshape(-1, 4)
    b = b.reshape(-1, 4)
    heights = np.maximum(
        0.0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    )
    widths = np.maximum(
        0.0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    )
    inter = heights * widths
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """VOC all-point AP of pooled detections (stable descending rank; ties keep input order)."""
    if n_gt <= 0:
        raise ValueError(f"n_gt must be positive, got {n_gt}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(tp, dtype=np.float64)[order]
    cum_tp = np.cumsum(hits)
    cum_fp = np.cumsum(1.0 - hits)
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1.0)
    recall = np.concatenate([[0.0], cum_tp / n_gt, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def match_detections(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching of ranked detections (rows) to ground truth (columns) → TP flags."""
    tp = np.zeros(iou.shape[0], dtype=bool)
    if iou.shape[1] == 0:
        return tp
    best = np.argmax(iou, axis=1)  # first maximum on ties
    hit = iou[np.arange(iou.shape[0]), best] >= threshold
    taken = np.zeros(iou.shape[1], dtype=bool)
    for i in np.flatnonzero(hit).tolist():
        g = best[i]
        if not taken[g]:
            taken[g] = tp[i] = True
    return tp


# --------------------------------------------------------------------------- reading


@dataclass
class _Truth:
    row: int
    height: int
    width: int
    labels: list[int]
    masks: list[str]
    counted: np.ndarray | None = None  # per pair: scored ground truth (set once decoded)

    def decode(self, mode: str):
        """Distinct masks decoded: (mask index of each pair, runs); sets ``counted``."""
        gt_of, runs = _decode_distinct(
            self.masks, self.height, self.width, f"solution row {self.row}"
        )
        if mode == "mask":  # empty ground-truth masks are not scored
            self.counted = (runs.areas() > 0)[gt_of]
        else:
            self.counted = np.ones(len(self.labels), dtype=bool)
        return gt_of, runs


def _where(source) -> str:
    return "solution table" if isinstance(source, pd.DataFrame) else str(source)


def _read_solution(source) -> dict[str, _Truth]:
    truth: dict[str, _Truth] = {}
    for row in iter_csv_rows(source):
        where = f"{_where(source)} row {row.row}"
        try:
            height, width = parse_size(row)
        except ValueError:
            raise InputError(
                f"{where}: bad image size {row.ImageWidth!r}x{row.ImageHeight!r}"
            ) from None
        tokens = row.PredictionString.split()
        if len(tokens) % 2:
            raise InputError(f"{where}: {len(tokens)} tokens, expected `label mask` pairs")
        labels, masks = [], []
        for label, mask in zip(tokens[0::2], tokens[1::2], strict=True):
            if not (label.isdigit() and int(label) < NUM_CLASSES):
                raise InputError(f"{where}: label {label!r} is not a class index 0..18")
            if mask != "-1":  # the hosts' marker for a cell without a usable mask
                labels.append(int(label))
                masks.append(mask)
        entry = truth.get(row.ID)
        if entry is None:
            truth[row.ID] = _Truth(row.row, height, width, labels, masks)
        elif (entry.height, entry.width) != (height, width):
            raise InputError(f"{where}: {row.ID!r} repeats row {entry.row} with another size")
        else:  # a repeated field adds its cells
            entry.labels += labels
            entry.masks += masks
    return truth


def _decode_distinct(texts: list[str], height: int, width: int, where: str):
    """Decode each distinct mask string once: (mask index of each text, run lists)."""
    index: dict[str, int] = {}
    which = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
    try:
        return which, decode_mask_strings(list(index), height, width)
    except MaskStringError as exc:
        text = list(index)[exc.index]
        raise InputError(f"{where}: mask {text[:20]!r}…: {exc}") from None


def _parse_detections(row: CsvRow, where: str):
    tokens = row.PredictionString.split()
    if len(tokens) % 3:
        raise InputError(f"{where}: {len(tokens)} tokens, expected `class confidence mask` triples")
    try:
        labels = np.array(tokens[0::3], dtype=np.int64)
        scores = np.array(tokens[1::3], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise InputError(
            f"{where}: class {labels[(labels < 0) | (labels >= NUM_CLASSES)][0]} not in 0..18"
        )
    if np.isnan(scores).any():
        raise InputError(f"{where}: a confidence is NaN")
    return labels, scores, tokens[2::3]


# --------------------------------------------------------------------------- evaluation


def _field_detections(row: CsvRow, truth: _Truth, mode: str, where: str):
    """Per class of the field's ground truth: (scores, IoU rows vs that class's cells)."""
    labels, scores, texts = _parse_detections(row, where)
    classes = sorted(set(truth.labels))
    keep = np.isin(labels, classes) & (scores > MIN_SCORE)
    if not keep.any():
        return {}
    try:
        size = parse_size(row)
    except ValueError:
        raise InputError(
            f"{where}: bad image size {row.ImageWidth!r}x{row.ImageHeight!r}"
        ) from None
    if size != (truth.height, truth.width):
        raise InputError(
            f"{where}: {row.ID!r} is {size[1]}x{size[0]} but {truth.width}x{truth.height} "
            "in the solution"
        )
    height, width = size
    idx = np.flatnonzero(keep)
    det_of, det_runs = _decode_distinct([texts[i] for i in idx], height, width, where)
    gt_of, gt_runs = truth.decode(mode)
    det_area, gt_area = det_runs.areas(), gt_runs.areas()
    if mode == "mask":
        inter = run_intersections(det_runs, gt_runs)
        union = det_area[:, None] + gt_area[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    else:
        iou = box_iou(runs_boxes(det_runs, height, width), runs_boxes(gt_runs, height, width))
    nonempty = det_area[det_of] > 0  # empty detection masks are dropped
    idx, det_of = idx[nonempty], det_of[nonempty]
    gt_labels = np.asarray(truth.labels, dtype=np.int64)
    gt_counted = truth.counted
    out = {}
    for c in np.unique(labels[idx]).tolist():
        sel = labels[idx] == c
        cells = gt_of[(gt_labels == c) & gt_counted]
        out[c] = (scores[idx][sel], iou[np.ix_(det_of[sel], cells)])
    return out


def _count_ground_truth(truth: dict[str, _Truth], mode: str) -> np.ndarray:
    """Number of scored ground-truth cells per class (decodes fields not decoded yet)."""
    n_gt = np.zeros(NUM_CLASSES, dtype=np.int64)
    for t in truth.values():
        if not t.labels:
            continue
        if t.counted is None:
            t.decode(mode)
        n_gt += np.bincount(np.asarray(t.labels)[t.counted], minlength=NUM_CLASSES)
    return n_gt


def evaluate(
    solution: str | os.PathLike | pd.DataFrame,
    submission: str | os.PathLike | pd.DataFrame,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    progress: bool = False,
    **overrides: Any,
) -> MetricResult:
    """Score a submission against a solution (see the module docstring for the rules).

    Parameters
    ----------
    solution : CSV path or DataFrame ``ID,ImageWidth,ImageHeight,PredictionString`` with
        ``label mask`` pairs (one pair per ground-truth cell and class).
    submission : CSV path or DataFrame with ``class confidence mask`` triples.
    options : ``iou``, the matching threshold (0 < iou ≤ 1), and ``mode``: ``"mask"`` (mask
        IoU) or ``"box"`` (IoU of the masks' tight boxes).
    progress : show a progress bar over submission rows.
    **overrides : fields of ``options`` to replace (``mode="box"``).

    Returns
    -------
    MetricResult: mAP over classes with ground truth, AP per such class, counts per class.
    """
    options = merged(EvaluateOptions, options, overrides)
    iou, mode = options.iou, options.mode
    truth = _read_solution(solution)

    # Per field (in order of first appearance) and class: ranked scores and IoU rows.
    pending: dict[str, dict[int, list]] = {}
    rows = iter_csv_rows(submission)
    rows = track(rows, "evaluate", enabled=progress)
    first_id, matched = None, 0
    for row in rows:
        first_id = row.ID if first_id is None else first_id
        t = truth.get(row.ID)
        matched += t is not None
        if t is None or not t.labels:
            continue
        where = f"{_where(submission)} row {row.row}"
        per_class = pending.setdefault(row.ID, {})
        for c, found in _field_detections(row, t, mode, where).items():
            per_class.setdefault(c, []).append(found)

    if not matched:
        # a score over no common field would read as a real (terrible) result
        example = f" (submission ID {first_id!r}, solution ID {next(iter(truth), None)!r})"
        raise InputError(
            f"{_where(submission)}: no ID in common with {_where(solution)}"
            f"{example if first_id is not None else ''}; score a submission of the solution's fields"
        )
    n_gt = _count_ground_truth(truth, mode)
    pooled_scores: dict[int, list[np.ndarray]] = {c: [] for c in range(NUM_CLASSES)}
    pooled_tp: dict[int, list[np.ndarray]] = {c: [] for c in range(NUM_CLASSES)}
    for per_class in pending.values():
        for c, parts in per_class.items():
            scores = np.concatenate([s for s, _ in parts])
            ious = np.concatenate([m for _, m in parts], axis=0)
            order = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS]
            pooled_scores[c].append(scores[order])
            pooled_tp[c].append(match_detections(ious[order], iou))

    per_class_ap: dict[int, float] = {}
    n_det: dict[int, int] = {}
    for c in range(NUM_CLASSES):
        scores = np.concatenate(pooled_scores[c]) if pooled_scores[c] else np.zeros(0)
        tp = np.concatenate(pooled_tp[c]) if pooled_tp[c] else np.zeros(0, dtype=bool)
        n_det[c] = int(scores.size)
        if n_gt[c] > 0:
            per_class_ap[c] = average_precision(scores, tp, int(n_gt[c]))
    m = float(np.mean(list(per_class_ap.values()))) if per_class_ap else float("nan")
    return MetricResult(m, per_class_ap, {c: int(n_gt[c]) for c in range(NUM_CLASSES)}, n_det)
