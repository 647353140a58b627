"""Submission rows: small-cell scaling, triples, mask strings, and the checker."""

import numpy as np
import pandas as pd
import pytest

from hpasc.cells import make_table
from hpasc.errors import InputError
from hpasc.rle import decode_mask_string
from hpasc.submission import (
    SUBMISSION_COLUMNS,
    SubmissionSummary,
    cell_facts,
    cell_scale,
    check_submission,
    field_rows,
    format_confidences,
)


def reference_mask():
    """The reference's self-test: 10x10, edge threshold 10, centre threshold 5."""
    m = np.zeros((10, 10), np.uint16)
    m[0:2, 0:7] = 1  # edge, 14 px -> 1.0
    m[7:9, 9] = 2  # edge, 2 px -> 0.2
    m[5:8, 2:5] = 3  # centre, 9 px -> 1.0
    m[3, 4:6] = 4  # centre, 2 px -> 0.4
    return m


def test_cell_scale_reference_self_test():
    ids, areas, edge = cell_facts(reference_mask())
    assert ids.tolist() == [1, 2, 3, 4]
    assert areas.tolist() == [14, 2, 9, 2]
    assert edge.tolist() == [True, True, False, False]
    np.testing.assert_allclose(cell_scale(areas, edge, 10, 5), [1.0, 0.2, 1.0, 0.4])


def test_cell_scale_non_positive_threshold_disables_the_rule():
    areas, edge = np.array([2, 2]), np.array([True, False])
    assert cell_scale(areas, edge, 0, 5).tolist() == [1.0, 0.4]
    assert cell_scale(areas, edge, 10, -1).tolist() == [0.2, 1.0]


def table_for(fields, value=1.0):
    image_ids, cell_ids = [], []
    for image_id, mask in fields:
        ids = np.unique(mask)
        ids = ids[ids != 0]
        image_ids += [image_id] * ids.size
        cell_ids += ids.tolist()
    probs = np.full((len(cell_ids), 19), value) * np.linspace(0.1, 1.0, 19)
    return make_table(image_ids, cell_ids, probs)


def parse(prediction):
    tokens = prediction.split()
    return [
        (int(a), float(b), c)
        for a, b, c in zip(tokens[0::3], tokens[1::3], tokens[2::3], strict=True)
    ]


def test_rows_hold_every_cell_with_every_class_scaled():
    mask = reference_mask()
    fields = [("f", mask), ("empty", np.zeros((4, 6), np.uint16))]
    table = table_for(fields)
    summary = SubmissionSummary()
    rows = list(
        field_rows(fields, table, edge_area_threshold=10, center_area_threshold=5, summary=summary)
    )
    assert [r.ID for r in rows] == ["f", "empty"]
    assert (rows[1].ImageWidth, rows[1].ImageHeight, rows[1].PredictionString) == (6, 4, "")
    triples = parse(rows[0].PredictionString)
    assert len(triples) == 4 * 19
    scale = {1: 1.0, 2: 0.2, 3: 1.0, 4: 0.4}
    base = np.linspace(0.1, 1.0, 19).astype(np.float32)
    for i, (label, conf, text) in enumerate(triples):
        cell = i // 19 + 1
        assert label == i % 19
        assert conf == pytest.approx(float(base[label]) * scale[cell], rel=1e-6)
        np.testing.assert_array_equal(decode_mask_string(text, 10, 10), mask == cell)
    assert (summary.fields, summary.empty_fields, summary.cells) == (2, 1, 4)
    assert (summary.edge_cells, summary.edge_scaled) == (2, 1)
    assert (summary.center_cells, summary.center_scaled) == (2, 1)
    assert summary.triples == 76 and summary.missing_cells == 0


def test_thresholds_scale_with_field_size():
    mask = reference_mask()
    table = table_for([("f", mask)])
    # Field area 100 px: thresholds become 10 * 100 / 2048**2 -> every cell keeps its confidence.
    rows = list(
        field_rows(
            [("f", mask)],
            table,
            edge_area_threshold=10,
            center_area_threshold=5,
            scale_thresholds_with_size=True,
        )
    )
    confs = [c for _, c, _ in parse(rows[0].PredictionString)]
    np.testing.assert_allclose(confs, np.tile(np.linspace(0.1, 1.0, 19), 4), rtol=1e-6)


def test_min_confidence_and_class_subset():
    mask = reference_mask()
    table = table_for([("f", mask)])
    options = {"edge_area_threshold": 0, "center_area_threshold": 0}
    rows = list(field_rows([("f", mask)], table, classes=[18, 0], min_confidence=0.5, **options))
    triples = parse(rows[0].PredictionString)
    assert [t[0] for t in triples] == [18] * 4  # class 0 has confidence 0.1 < 0.5
    with pytest.raises(InputError, match="classes"):
        list(field_rows([("f", mask)], table, classes=[19]))


def test_missing_cells_are_left_out_or_an_error_when_strict():
    mask = reference_mask()
    table = table_for([("f", mask)])
    partial = table[table.cell_id != 3]
    summary = SubmissionSummary()
    rows = list(field_rows([("f", mask)], partial, summary=summary))
    assert len(parse(rows[0].PredictionString)) == 3 * 19
    assert summary.missing_cells == 1 and summary.missing_examples == [("f", 3)]
    with pytest.raises(InputError, match=r"mask cells \[3\] have no prediction"):
        list(field_rows([("f", mask)], partial, strict=True))


def test_predicted_cell_absent_from_mask_is_an_error():
    mask = reference_mask()
    table = table_for([("f", mask)])
    other = table.assign(cell_id=table.cell_id.where(table.cell_id != 4, 9))
    with pytest.raises(InputError, match=r"predicted cells \[9\]"):
        list(field_rows([("f", mask)], other))
    with pytest.raises(InputError, match="no mask"):
        list(field_rows([("g", mask)], table))


def test_confidence_strings_round_trip_float32():
    values = np.array([0.1, 1 / 3, 1e-7, 0.0, 1.0], dtype=np.float32)
    text = format_confidences(values)
    assert text[0] == "0.1" and text[3] == "0.0"
    assert np.array([float(t) for t in text], dtype=np.float32).tolist() == values.tolist()
    assert max(len(t) for t in text) <= 12


def write_csv(path, rows):
    pd.DataFrame(rows, columns=SUBMISSION_COLUMNS).to_csv(path, index=False)


def test_check_accepts_valid_rows_and_reports_bad_ones_with_their_row(tmp_path):
    mask = reference_mask()
    fields = [("f", mask), ("g", mask), ("e", np.zeros((4, 6), np.uint16))]
    rows = [tuple(r) for r in field_rows(fields, table_for(fields))]
    write_csv(tmp_path / "ok.csv", rows)
    assert check_submission(tmp_path / "ok.csv") == []

    good = rows[0][3]
    bad = [
        rows[0],
        ("g", 10, 10, "19 0.5 " + good.split()[2]),  # line 3: label
        ("h", 10, 10, "0 1.5 " + good.split()[2]),  # line 4: confidence
        ("i", 12, 10, " ".join(good.split()[:6])),  # line 5: mask of another size
        ("j", 10, 10, "0 0.5 notamask"),  # line 6: undecodable
        ("f", 10, 10, ""),  # line 7: duplicate ID
        ("k", 0, 10, ""),  # line 8: size
        ("l", 10, 10, "0 nan " + good.split()[2]),  # line 9: NaN
        ("m", 10, 10, "0 0.5"),  # line 10: not triples
    ]
    write_csv(tmp_path / "bad.csv", bad)
    problems = check_submission(tmp_path / "bad.csv")
    assert [p.row for p in problems] == [3, 4, 5, 6, 7, 8, 9, 10]
    text = [str(p) for p in problems]
    assert "label '19'" in text[0]
    assert "'1.5' is not in [0, 1]" in text[1]
    assert "not add up to 12x10" in text[2]
    assert "repeats row 2" in text[4]
    assert text[0].startswith("row 3: ID 'g'")


def test_check_reports_header_and_column_count(tmp_path):
    (tmp_path / "h.csv").write_text("Id,ImageWidth,ImageHeight,PredictionString\nf,1,1,\n")
    assert check_submission(tmp_path / "h.csv")[0].row == 1
    (tmp_path / "c.csv").write_text(",".join(SUBMISSION_COLUMNS) + "\nf,1,1,,extra\ng,1,1,\n")
    problems = check_submission(tmp_path / "c.csv")
    assert [(p.row, "columns" in p.message) for p in problems] == [(2, True)]
