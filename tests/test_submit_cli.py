"""End to end on synthetic fields: hpasc submit -> hpasc submission check -> hpasc evaluate."""

import json

import numpy as np
import pandas as pd
import pytest

from hpasc.cells import make_table, write_table
from hpasc.errors import InputError
from hpasc.io.images import write_mask
from hpasc.io.store import Store
from hpasc.metric import evaluate
from hpasc.rle import encode_instance_mask
from hpasc.submission import build_submission, check_submission, write_submission

H, W = 96, 128  # non-square on purpose


def synthetic_fields(rng, n_fields=6):
    """Grid-of-blobs label maps (some cells on the border) with 1-2 true classes per cell."""
    yy, xx = np.mgrid[0:H, 0:W]
    fields = []
    for f in range(n_fields):
        mask = np.zeros((H, W), np.uint16)
        cell = 0
        for cy in range(12, H, 32):
            for cx in range(12, W, 32):
                if rng.random() < 0.2:
                    continue
                cell += 1
                r = rng.uniform(8, 15)
                mask[(yy - cy - rng.integers(-3, 4)) ** 2 + (xx - cx) ** 2 < r * r] = cell
        labels = {
            int(c): rng.choice(19, size=rng.integers(1, 3), replace=False).tolist()
            for c in np.unique(mask)
            if c
        }
        fields.append((f"field{f:02d}", mask, labels))
    fields.append(("empty", np.zeros((H, W), np.uint16), {}))
    return fields


def solution_frame(fields):
    rows = []
    for image_id, mask, labels in fields:
        strings = encode_instance_mask(mask)
        pairs = [f"{k} {strings[c]}" for c, ks in labels.items() for k in ks]
        rows.append((image_id, W, H, " ".join(pairs)))
    return pd.DataFrame(rows, columns=["ID", "ImageWidth", "ImageHeight", "PredictionString"])


def truth_table(fields, rng=None):
    """Probability 1 for each cell's true classes, 0 otherwise (labels shuffled if rng)."""
    ids, cells, probs = [], [], []
    for image_id, _, labels in fields:
        for c, ks in labels.items():
            p = np.zeros(19)
            p[ks] = 1.0
            ids.append(image_id)
            cells.append(c)
            probs.append(p)
    probs = np.array(probs)
    if rng is not None:
        probs = probs[rng.permutation(len(probs))]
    return make_table(ids, cells, probs)


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(0)
    fields = synthetic_fields(rng)
    masks = Store(tmp_path / "masks")
    for image_id, mask, _ in fields:
        write_mask(masks, image_id, mask)
    solution_frame(fields).to_csv(tmp_path / "solution.csv", index=False)
    return tmp_path, fields


OFF = {"edge_area_threshold": 0, "center_area_threshold": 0}


def test_true_masks_and_labels_score_one_and_shuffled_labels_far_lower(synthetic):
    tmp_path, fields = synthetic
    solution = tmp_path / "solution.csv"
    perfect = build_submission(tmp_path / "masks", truth_table(fields), **OFF)
    assert perfect["ID"].tolist() == sorted(f[0] for f in fields)
    assert evaluate(solution, perfect).map == 1.0
    assert evaluate(solution, perfect, mode="box").map == 1.0
    shuffled = build_submission(
        tmp_path / "masks", truth_table(fields, np.random.default_rng(1)), **OFF
    )
    assert evaluate(solution, shuffled).map < 0.5


def test_averaging_two_tables_and_missing_cells(synthetic):
    tmp_path, fields = synthetic
    table = truth_table(fields)
    noisy = table.copy()
    noisy["p00"] = np.float32(0.5)
    summary_avg = write_submission(
        tmp_path / "masks", [table, noisy], tmp_path / "s.csv", weights=[3, 1], **OFF
    )
    assert summary_avg.missing_cells == 0
    frame = pd.read_csv(tmp_path / "s.csv", keep_default_na=False)
    first = frame.set_index("ID").loc["field00", "PredictionString"].split()  # cell 1, class 0
    assert first[0] == "0"
    expected = 0.75 * float(table.p00.iloc[0]) + 0.25 * 0.5
    assert float(first[1]) == pytest.approx(expected)
    partial = table.iloc[1:]
    with pytest.raises(InputError, match="not in every prediction table"):
        write_submission(tmp_path / "masks", [table, partial], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    s = write_submission(tmp_path / "masks", partial, tmp_path / "p.csv", **OFF)
    assert s.missing_cells == 1
    with pytest.raises(InputError, match="no prediction"):
        write_submission(tmp_path / "masks", partial, tmp_path / "q.csv", strict=True)
    assert not (tmp_path / "q.csv").exists()  # nothing half-written
    wrong = table.assign(image_id=table.image_id.str.replace("field00", "other"))
    with pytest.raises(InputError, match="'other'"):
        write_submission(tmp_path / "masks", wrong, tmp_path / "r.csv")


def test_cli_submit_check_evaluate(synthetic, cli):
    tmp_path, fields = synthetic
    write_table(truth_table(fields), tmp_path / "a.parquet")
    write_table(truth_table(fields), tmp_path / "b.parquet")
    out = tmp_path / "submission.csv"
    r = cli(
        "submit", "--masks", tmp_path / "masks", "--predictions", tmp_path / "a.parquet",
        tmp_path / "b.parquet", "--weights", "1,2", "--edge-area-threshold", "0",
        "--center-area-threshold", "0", "--no-progress", "-o", out, check=True,
    )  # fmt: skip
    assert "fields: 7 (1 without cells)" in r.stdout
    assert "without a prediction (left out): 0" in r.stdout

    r = cli("submission", "check", out, "--masks", tmp_path / "masks", check=True)
    assert "OK" in r.stdout

    r = cli("evaluate", "--solution", tmp_path / "solution.csv", "--submission", out, check=True)
    assert "mAP" in r.stdout and "Nucleoplasm" in r.stdout
    r = cli(
        "evaluate", "--solution", tmp_path / "solution.csv", "--submission", out, "--json",
        check=True,
    )  # fmt: skip
    result = json.loads(r.stdout)
    assert result["mAP"] == 1.0
    assert set(result["per_class"]) == {
        str(k) for _, _, ls in fields for v in ls.values() for k in v
    }

    # A broken row: check names its row and fails; evaluate fails with one line.
    lines = out.read_text().splitlines()
    lines[3] = lines[3].replace(" 0.0 ", " 7.5 ", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    r = cli("submission", "check", bad)
    assert r.returncode != 0 and "1 problem in" in r.stderr
    assert "row 4:" in r.stdout and "'7.5' is not in [0, 1]" in r.stdout

    r = cli(
        "cells",
        "average",
        tmp_path / "a.parquet",
        tmp_path / "b.parquet",
        "-o",
        tmp_path / "c.parquet",
    )
    assert r.returncode == 0 and "cells of 6 fields" in r.stdout

    r = cli(
        "submit", "--masks", tmp_path / "nope", "--predictions", tmp_path / "a.parquet", "-o", out
    )
    assert r.returncode != 0 and r.stderr.startswith("error:")


def test_check_against_masks_reports_sizes_and_missing_fields(synthetic):
    tmp_path, fields = synthetic
    frame = build_submission(tmp_path / "masks", truth_table(fields), **OFF)
    frame.loc[1, "ImageWidth"] = W + 1
    frame = frame.drop(index=2)
    frame.to_csv(tmp_path / "s.csv", index=False)
    problems = check_submission(tmp_path / "s.csv", masks=tmp_path / "masks")
    messages = [str(p) for p in problems]
    assert any(m.startswith("row 3:") and "mask is 128x96" in m for m in messages)
    assert any("have no row" in m for m in messages)
