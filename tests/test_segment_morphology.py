"""Label-map helpers of the segmenters."""

import numpy as np

from hpasc.segment.morphology import (
    fill_label_holes,
    merge_shallow_basins,
    relabel_sequential,
    remove_small_labels,
    touching_pairs,
)


def test_relabel_and_remove_small():
    labels = np.array([[0, 5, 5, 9], [0, 5, 5, 9], [2, 0, 0, 0]], np.uint16)
    assert relabel_sequential(labels).tolist() == [[0, 2, 2, 3], [0, 2, 2, 3], [1, 0, 0, 0]]
    assert relabel_sequential(labels).dtype == np.uint16
    kept = remove_small_labels(labels, 2)
    assert set(np.unique(kept)) == {0, 5, 9}


def test_fill_label_holes_fills_only_holes_inside_one_object():
    labels = np.zeros((12, 20), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # hole inside object 1
    labels[1:11, 8:12] = 2
    labels[1:11, 12:16] = 3
    labels[5, 11:13] = 0  # gap between objects 2 and 3
    labels[0, 0] = 0
    filled = fill_label_holes(labels)
    assert filled[3, 3] == 1
    assert filled[5, 11] == 0 and filled[5, 12] == 0
    assert np.array_equal(filled[labels > 0], labels[labels > 0])


def test_touching_pairs_reports_the_highest_contact():
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3]])
    values = np.array([[0, 5, 7, 0], [0, 1, 1, 0], [9, 9, 9, 9]], float)
    a, b, saddle = touching_pairs(labels, values)
    got = {(int(x), int(y)): float(v) for x, y, v in zip(a, b, saddle, strict=True)}
    assert got == {(1, 2): 5.0, (1, 3): 1.0, (2, 3): 1.0}


def _two_disks(distance: float, radius: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    yy, xx = np.mgrid[:80, :120]
    c1, c2 = 60 - distance / 2, 60 + distance / 2
    d1 = np.hypot(yy - 40, xx - c1)
    d2 = np.hypot(yy - 40, xx - c2)
    mask = (d1 < radius) | (d2 < radius)
    labels = np.where(mask, np.where(d1 <= d2, 1, 2), 0).astype(np.int32)
    height = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return labels, height


def test_shallow_basins_merge_and_narrow_necks_stay_apart():
    wide, height = _two_disks(distance=20)  # deep overlap: one lobed object
    assert merge_shallow_basins(wide, height, 0.5).max() == 1
    narrow, height = _two_disks(distance=38)  # joined by a thin neck: two objects
    assert merge_shallow_basins(narrow, height, 0.5).max() == 2
