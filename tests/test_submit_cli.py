"""Submissions from mask stores, scored end to end on synthetic data.

``hpasc synth`` data for the acceptance run (hpasc submit -> hpasc submission check -> hpasc
evaluate); small hand-made non-square fields for the library paths.
"""

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
from hpasc.synth import synthesize

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


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    synthesize(out, n_images=4, size=256, seed=0, progress=False)
    return out


def synth_table(folder, rng=None):
    """Prediction table of the true cell labels of an ``hpasc synth`` set (shuffled if rng)."""
    cells = pd.read_csv(folder / "cells.csv", dtype={"labels": str})
    probs = np.zeros((len(cells), 19))
    for i, labels in enumerate(cells["labels"]):
        probs[i, [int(k) for k in labels.split("|")]] = 1.0
    if rng is not None:
        probs = probs[rng.permutation(len(probs))]
    return make_table(cells["image_id"], cells["cell_id"], probs)


def test_synth_truth_scores_one_and_shuffled_labels_far_lower(synth_set):
    solution = synth_set / "solution.csv"
    perfect = build_submission(synth_set / "masks", synth_table(synth_set), **OFF)
    assert evaluate(solution, perfect).map == 1.0
    assert evaluate(solution, perfect, mode="box").map == 1.0
    shuffled = synth_table(synth_set, np.random.default_rng(0))
    # Synthetic fields share few classes (Negative everywhere), so shuffling keeps some AP.
    assert evaluate(solution, build_submission(synth_set / "masks", shuffled, **OFF)).map < 0.8


def test_non_square_truth_scores_one_and_shuffled_labels_far_lower(synthetic):
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
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["masks", "p.csv", "s.csv", "solution.csv"]  # no partial or temporary file


def test_cli_submit_check_evaluate_on_synth(synth_set, tmp_path, cli):
    write_table(synth_table(synth_set), tmp_path / "a.parquet")
    write_table(synth_table(synth_set, np.random.default_rng(0)), tmp_path / "b.parquet")
    masks, solution = synth_set / "masks", synth_set / "solution.csv"
    out = tmp_path / "submission.csv"
    r = cli(
        "submit", "--masks", masks, "--predictions", tmp_path / "a.parquet",
        tmp_path / "b.parquet", "--weights", "1,0", "--scale-thresholds-with-size",
        "--no-progress", "-o", out, check=True,
    )  # fmt: skip
    n_fields = len(list(masks.iterdir()))
    assert f"fields: {n_fields} (0 without cells)" in r.stdout
    assert "without a prediction (left out): 0" in r.stdout

    r = cli("submission", "check", out, "--masks", masks, check=True)
    assert "OK" in r.stdout

    r = cli("evaluate", "--solution", solution, "--submission", out, check=True)
    assert "mAP" in r.stdout and "Negative" in r.stdout
    r = cli("evaluate", "--solution", solution, "--submission", out, "--json", check=True)
    result = json.loads(r.stdout)
    assert result["mAP"] > 0.9  # the true labels, a few small cells down-weighted
    truth = pd.read_csv(synth_set / "cells.csv", dtype={"labels": str})["labels"]
    assert set(result["per_class"]) == {k for v in truth for k in v.split("|")}

    # A broken row: check names its row and fails.
    lines = out.read_text().splitlines()
    head, prediction = lines[3].rsplit(",", 1)
    tokens = prediction.split()
    tokens[1] = "7.5"  # the first confidence
    lines[3] = f"{head},{' '.join(tokens)}"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    r = cli("submission", "check", bad)
    assert r.returncode != 0 and "1 problem in" in r.stderr
    assert "row 4:" in r.stdout and "confidence '7.5" in r.stdout

    r = cli(
        "cells",
        "average",
        tmp_path / "a.parquet",
        tmp_path / "b.parquet",
        "-o",
        tmp_path / "c.parquet",
    )
    assert r.returncode == 0 and f"of {n_fields} fields" in r.stdout

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
