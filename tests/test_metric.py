"""The competition metric on hand-made cases (expected APs computed by hand)."""

import numpy as np
import pandas as pd
import pytest

from hpasc.errors import InputError
from hpasc.metric import average_precision, box_iou, evaluate, run_intersections, runs_boxes
from hpasc.rle import decode_mask_strings, encode_binary_mask

H = W = 10


def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


A = box(0, 3, 0, 3)  # 9 px
B = box(5, 8, 5, 8)  # 9 px, disjoint from A
C = box(0, 3, 6, 9)  # 9 px, disjoint from both


def frame(rows):
    """rows: (id, [(label, [conf,] mask), ...]) -> DataFrame in the Kaggle layout."""
    out = []
    for image_id, items in rows:
        parts = []
        for item in items:
            *head, mask = item
            text = mask if isinstance(mask, str) else encode_binary_mask(mask)
            parts += [str(v) for v in head] + [text]
        out.append((image_id, W, H, " ".join(parts)))
    return pd.DataFrame(out, columns=["ID", "ImageWidth", "ImageHeight", "PredictionString"])


def score(solution, submission, **kw):
    return evaluate(frame(solution), frame(submission), **kw)


def test_perfect_submission_scores_one():
    solution = [("f1", [(0, A), (3, A), (0, B)]), ("f2", [(5, C)])]
    submission = [
        ("f1", [(k, 0.9, m) for m in (A, B) for k in range(19)]),
        ("f2", [(k, 0.5, C) for k in range(19)]),
    ]
    result = score(solution, submission)
    assert result.map == 1.0
    assert result.per_class == {0: 1.0, 3: 1.0, 5: 1.0}
    assert result.n_gt[0] == 2 and result.n_gt[3] == 1 and result.n_gt[5] == 1
    assert result.n_gt[1] == 0


def test_false_positive_ranked_above_true_positives():
    # Ranked FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP = 2/3.
    solution = [("f", [(0, A), (0, B)])]
    submission = [("f", [(0, 0.7, B), (0, 0.9, C), (0, 0.8, A)])]
    assert score(solution, submission).map == pytest.approx(2 / 3)


def test_duplicate_detection_is_a_false_positive():
    # A (TP), A again (FP: A is taken, no fallback), B (TP): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    solution = [("f", [(0, A), (0, B)])]
    submission = [("f", [(0, 0.9, A), (0, 0.8, A), (0, 0.7, B)])]
    assert score(solution, submission).map == pytest.approx(5 / 6)


def test_no_fallback_to_the_second_best_cell():
    # At IoU 0.25 a detection can reach two disjoint cells.
    a = box(0, 4, 0, 2)  # 8 px
    b = box(0, 4, 3, 5)  # 8 px
    d = box(0, 4, 1, 4)  # 12 px: 4 px with a, 4 px with b -> IoU 4/16 each
    d2 = box(0, 4, 0, 3)  # 12 px: 8 px with a (IoU 8/12), 4 px with b (IoU 4/16)
    solution = [("f", [(0, a), (0, b)])]
    # d2 (0.9) takes a; d (0.8) has equal IoU with a and b: argmax picks a (first), taken -> FP
    # (matching b instead would give AP 1).
    result = score(solution, [("f", [(0, 0.9, d2), (0, 0.8, d)])], iou=0.25)
    assert result.map == pytest.approx(0.5)


def test_field_missing_from_submission_counts_as_misses():
    solution = [("f1", [(0, A)]), ("f2", [(0, B)])]
    submission = [("f1", [(0, 0.9, A)])]
    result = score(solution, submission)
    assert result.n_gt[0] == 2
    assert result.map == pytest.approx(0.5)


def test_class_absent_from_ground_truth_is_not_averaged():
    solution = [("f", [(0, A)])]
    submission = [("f", [(0, 0.9, A), (5, 0.99, B), (5, 0.9, A)])]
    result = score(solution, submission)
    assert result.per_class == {0: 1.0}
    assert result.map == 1.0


def test_detections_of_a_class_absent_from_the_field_are_ignored():
    solution = [("f1", [(0, A)]), ("f2", [(1, B)])]
    # Class 1 on f1 is not in f1's ground truth: ignored, not a false positive ranked first.
    submission = [("f1", [(0, 0.9, A), (1, 0.99, A)]), ("f2", [(1, 0.5, B)])]
    assert score(solution, submission).per_class == {0: 1.0, 1: 1.0}
    # Detections on fields without ground truth or absent from the solution: ignored too.
    solution2 = solution + [("f3", [])]
    submission2 = submission + [("f3", [(1, 1.0, C)]), ("zz", [(1, 1.0, C)])]
    assert score(solution2, submission2).per_class == {0: 1.0, 1: 1.0}


def test_ties_keep_submission_order():
    solution = [("f", [(0, A), (0, B)])]
    fp_first = [("f", [(0, 0.5, C), (0, 0.5, A), (0, 0.5, B)])]
    fp_last = [("f", [(0, 0.5, A), (0, 0.5, B), (0, 0.5, C)])]
    assert score(solution, fp_first).map == pytest.approx(2 / 3)
    assert score(solution, fp_last).map == pytest.approx(1.0)


def test_ties_across_fields_keep_first_appearance_order():
    solution = [("f1", [(0, A)]), ("f2", [(0, B)])]
    # f2 appears first in the submission; its FP ties with f1's TP and is ranked above it.
    submission = [("f2", [(0, 0.5, C), (0, 0.4, B)]), ("f1", [(0, 0.5, A)])]
    # Pooled ranking: FP(f2, .5), TP(f1, .5), TP(f2, .4) -> AP = 2/3.
    assert score(solution, submission).map == pytest.approx(2 / 3)
    swapped = [submission[1], submission[0]]
    # TP(f1), FP(f2), TP(f2): AP = 1/2 + 1/2 * 2/3 = 5/6.
    assert score(solution, swapped).map == pytest.approx(5 / 6)


def test_iou_threshold_is_inclusive_and_exact():
    gt = box(0, 1, 0, 5)  # 5 px
    exact = box(0, 1, 0, 3)  # IoU 3/5 = 0.6 exactly -> TP
    below = box(0, 1, 0, 3) | box(9, 10, 9, 10)  # inter 3, union 6 -> 0.5 -> FP
    solution = [("f", [(0, gt)])]
    assert score(solution, [("f", [(0, 0.9, exact)])]).map == 1.0
    assert score(solution, [("f", [(0, 0.9, below)])]).map == 0.0


def test_box_mode_differs_from_mask_mode():
    ell = box(0, 10, 0, 1) | box(9, 10, 0, 10)  # an L: 19 px
    filled = box(0, 10, 0, 10)  # same tight box, 100 px
    solution = [("f", [(0, ell)])]
    submission = [("f", [(0, 0.9, filled)])]
    assert score(solution, submission, mode="mask").map == 0.0
    assert score(solution, submission, mode="box").map == 1.0


def test_dropped_detections_and_skipped_ground_truth():
    empty = np.zeros((H, W), bool)
    solution = [("f", [(0, A), (0, "-1"), (0, empty)])]
    # The -1 pair is skipped; in mask mode the empty cell is not counted.
    submission = [("f", [(0, 0.9, empty), (0, -10, C), (0, 0.8, A)])]
    result = score(solution, submission)
    assert result.n_gt[0] == 1
    assert result.map == 1.0  # the empty-mask and the -10 detections were dropped
    assert result.n_detections[0] == 1
    # In box mode the empty cell counts and cannot be matched.
    assert score(solution, submission, mode="box").map == pytest.approx(0.5)


def test_at_most_10000_detections_per_field_and_class():
    solution = [("f", [(0, A)])]
    c = encode_binary_mask(C)
    many = [(0, 0.9, c)] * 10_000 + [(0, 0.1, A)]
    assert score(solution, [("f", many)]).map == 0.0
    fewer = [(0, 0.9, c)] * 9_999 + [(0, 0.1, A)]
    assert score(solution, [("f", fewer)]).map == pytest.approx(1 / 10_000)


def test_repeated_rows_add_detections_in_row_order():
    solution = [("f", [(0, A), (0, B)])]
    submission = [("f", [(0, 0.5, C)]), ("f", [(0, 0.5, A), (0, 0.5, B)])]
    assert score(solution, submission).map == pytest.approx(2 / 3)


def test_bad_submission_rows_raise_with_the_row():
    solution = frame([("f", [(0, A)])])
    bad = frame([("f", [(0, 0.9, A)])])
    bad.loc[0, "PredictionString"] += " 0 0.5"
    with pytest.raises(InputError, match="row 2"):
        evaluate(solution, bad)
    wrong_size = frame([("f", [(0, 0.9, A)])])
    wrong_size.loc[0, "ImageWidth"] = 11
    with pytest.raises(InputError, match="11x10"):
        evaluate(solution, wrong_size)


def test_csv_paths_and_dataframes_agree(tmp_path):
    solution = frame([("f1", [(0, A), (2, B)]), ("f2", [(2, C)])])
    submission = frame([("f1", [(0, 0.2, B), (0, 0.9, A), (2, 0.3, B)]), ("f2", [(2, 0.6, A)])])
    solution.to_csv(tmp_path / "s.csv", index=False)
    submission.to_csv(tmp_path / "p.csv", index=False)
    a = evaluate(solution, submission)
    b = evaluate(tmp_path / "s.csv", tmp_path / "p.csv")
    assert a == b
    assert a.per_class == {0: 1.0, 2: 0.25}  # class 2: FP(0.6) then TP(0.3), recall 1/2


def test_average_precision_voc_all_point():
    # Ranked TP, FP, TP with 3 GT: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 3)
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    assert average_precision(np.zeros(0), np.zeros(0), 2) == 0.0


def test_run_intersections_match_dense_masks():
    rng = np.random.default_rng(0)
    h, w = 13, 17
    labels = rng.integers(0, 5, (h, w))
    gt = [labels == k for k in range(1, 5)]
    dets = [rng.random((h, w)) < 0.3 for _ in range(6)] + [np.zeros((h, w), bool)]
    overlapping = gt + [gt[0] | gt[1]]  # not disjoint: the slow path

    def runs(masks):
        return decode_mask_strings([encode_binary_mask(m) for m in masks], h, w)

    for truth in (gt, overlapping):
        expected = np.array([[(d & g).sum() for g in truth] for d in dets])
        np.testing.assert_array_equal(run_intersections(runs(dets), runs(truth)), expected)


def test_runs_box_and_box_iou():
    h, w = 7, 5
    masks = [
        box(2, 5, 1, 3, h, w),
        np.zeros((h, w), bool),
        box(0, 7, 2, 3, h, w) | box(6, 7, 3, 5, h, w),  # runs crossing columns
        box(3, 4, 4, 5, h, w),
    ]
    expected = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        expected.append(
            [ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w]
            if ys.size
            else [0.0] * 4
        )
    runs = decode_mask_strings([encode_binary_mask(m) for m in masks], h, w)
    assert runs_boxes(runs, h, w).tolist() == expected
    a = np.array([[0.0, 0.0, 0.5, 0.5]])
    b = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5]])
    np.testing.assert_allclose(box_iou(a, b), [[0.0625 / 0.4375, 1.0]])


# --------------------------------------------------------------------------- brute-force oracle


def naive_map(solution, submission, threshold, mode):
    """The rules of the module docstring on dense masks, written as plainly as possible."""

    def iou_of(d, g):
        if mode == "mask":
            union = (d | g).sum()
            return (d & g).sum() / union if union else 0.0
        boxes = []
        for m in (d, g):
            ys, xs = np.nonzero(m)
            boxes.append(
                [ys.min() / H, xs.min() / W, (ys.max() + 1) / H, (xs.max() + 1) / W]
                if ys.size
                else [0.0] * 4
            )
        return box_iou(np.array(boxes[0]), np.array(boxes[1]))[0, 0]

    truth = {i: [(c, m) for c, m in items if not isinstance(m, str)] for i, items in solution}
    n_gt = {}
    for items in truth.values():
        for c, m in items:
            if mode == "box" or m.any():
                n_gt[c] = n_gt.get(c, 0) + 1
    dets = {}
    for image_id, items in submission:
        dets.setdefault(image_id, []).extend(items)
    pooled = {}
    for image_id, items in dets.items():
        gt = truth.get(image_id, [])
        classes = {c for c, _ in gt}
        for c in sorted(classes):
            mine = [(s, m) for k, s, m in items if k == c and s > -10 and m.any()]
            mine = sorted(mine, key=lambda t: -t[0])[:10_000]  # Python's sort is stable
            cells = [m for k, m in gt if k == c and (mode == "box" or m.any())]
            taken = [False] * len(cells)
            for s, m in mine:
                ious = [iou_of(m, g) for g in cells]
                hit = False
                if ious:
                    j = int(np.argmax(ious))
                    if ious[j] >= threshold and not taken[j]:
                        taken[j] = hit = True
                pooled.setdefault(c, []).append((s, hit))
    aps = []
    for c, count in n_gt.items():
        ranked = sorted(pooled.get(c, []), key=lambda t: -t[0])
        tp = fp = 0
        points = []
        for _, hit in ranked:
            tp, fp = tp + hit, fp + (not hit)
            points.append((tp / count, tp / (tp + fp)))
        ap, prev = 0.0, 0.0
        for k, (r, _) in enumerate(points):
            if r > prev:
                ap += (r - prev) * max(p for _, p in points[k:])
                prev = r
        aps.append(ap)
    return float(np.mean(aps))


def random_case(rng):
    n_fields = int(rng.integers(1, 5))
    solution, submission = [], []
    for f in range(n_fields):
        labels = np.zeros((H, W), int)
        for k in range(1, 6):
            y, x = rng.integers(0, H - 2, 2)
            labels[y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = k
        cells = [labels == k for k in range(1, 6) if (labels == k).any()]
        gt = [(int(c), m) for m in cells for c in rng.choice(4, rng.integers(1, 3), replace=False)]
        if rng.random() < 0.2:
            gt.append((int(rng.integers(4)), np.zeros((H, W), bool)))
        solution.append((f"f{f}", gt))
        items = []
        for m in cells + [rng.random((H, W)) < 0.1]:
            shaken = m.copy()
            shaken[rng.random((H, W)) < 0.1] ^= True
            for c in range(4):
                items.append(
                    (c, float(rng.integers(0, 5)) / 4, shaken if rng.random() < 0.5 else m)
                )
        order = rng.permutation(len(items))
        submission.append((f"f{f}", [items[i] for i in order]))
    return solution, submission


@pytest.mark.parametrize("mode", ["mask", "box"])
def test_metric_matches_brute_force_on_random_cases(mode):
    rng = np.random.default_rng(7)
    for _ in range(25):
        solution, submission = random_case(rng)
        threshold = float(rng.choice([0.3, 0.5, 0.6]))
        expected = naive_map(solution, submission, threshold, mode)
        got = score(solution, submission, iou=threshold, mode=mode).map
        assert got == pytest.approx(expected, abs=1e-12)
