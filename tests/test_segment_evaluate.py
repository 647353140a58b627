"""match_f1: one-to-one instance matching at an IoU threshold."""

import numpy as np
import pytest

from hpasc.segment.evaluate import match_counts, match_f1


def _squares(n: int, side: int = 10, gap: int = 2) -> np.ndarray:
    pitch = side + gap
    labels = np.zeros((pitch, pitch * n), np.int32)
    for k in range(n):
        labels[:side, k * pitch : k * pitch + side] = k + 1
    return labels


def test_identical_maps_score_one_and_labels_need_not_match():
    true = _squares(5)
    pred = np.where(true > 0, 100 - true, 0)  # same objects, other numbers
    assert match_f1(pred, true) == (1.0, 1.0, 1.0)


def test_counts_misses_and_false_positives():
    true = _squares(4)
    pred = true.copy()
    pred[true == 4] = 0  # one missed
    pred[10:12, :] = 9  # a thin false positive along the bottom
    matched, n_pred, n_true = match_counts(pred, true)
    assert (matched, n_pred, n_true) == (3, 4, 4)
    f1, precision, recall = match_f1(pred, true)
    assert f1 == pytest.approx(0.75) and precision == pytest.approx(0.75)
    assert recall == pytest.approx(0.75)


def test_iou_threshold_is_inclusive_and_enforced():
    true = np.zeros((10, 10), np.uint16)
    true[:, :5] = 1  # 50 px
    pred = np.zeros_like(true)
    pred[:, :3] = 1  # IoU 30/50 = 0.6 exactly
    assert match_f1(pred, true, iou=0.6)[0] == 1.0
    pred[0, 2] = 0  # IoU 29/50 < 0.6
    assert match_f1(pred, true, iou=0.6)[0] == 0.0


def test_merged_prediction_matches_at_most_one():
    true = _squares(2, side=10, gap=0)
    pred = (true > 0).astype(np.int32)  # one object covering both: IoU 0.5 with each
    assert match_counts(pred, true, iou=0.6)[0] == 0
    assert match_counts(pred, true, iou=0.5)[0] == 1  # one-to-one even when both qualify


def test_empty_maps_and_large_labels():
    empty = np.zeros((5, 5), np.uint16)
    assert match_f1(empty, empty) == (1.0, 1.0, 1.0)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert match_f1(empty, one) == (0.0, 0.0, 0.0)
    big = np.where(one > 0, 2**40, 0).astype(np.int64)
    assert match_f1(big, one) == (1.0, 1.0, 1.0)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        match_f1(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="negative"):
        match_f1(-np.ones((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integer"):
        match_f1(np.zeros((2, 2)), np.zeros((2, 2), int))
