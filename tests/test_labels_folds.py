import numpy as np
import pytest

from hpasc.classes import (
    CLASS_NAMES,
    NUM_CLASSES,
    class_index,
    read_kaggle_labels,
    read_labels,
    read_public_hpa_labels,
)
from hpasc.data.folds import make_folds
from hpasc.errors import InputError


def test_classes():
    assert NUM_CLASSES == 19
    assert CLASS_NAMES[0] == "Nucleoplasm" and CLASS_NAMES[18] == "Negative"
    assert CLASS_NAMES[17].startswith("Vesicles")
    assert class_index("negative") == 18 and class_index("6") == 6


def test_kaggle_table(hpa_real):
    t = read_kaggle_labels(hpa_real / "kaggle-train" / "train.csv")
    assert t.ids == ["5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"]
    assert t.labels == [[8, 5, 0]]
    assert t.y.shape == (1, 19) and t.y[0, [0, 5, 8]].tolist() == [1, 1, 1] and t.y.sum() == 3
    full = read_labels(hpa_real / "train-2021-labels.csv")
    assert len(full) == 21806


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("ID,Label\na,1|2\nb,1|19\n", r"row 3 .*19 is out of range"),
        ("ID,Label\na,1\nb,x\n", r"row 3 .*'x'"),
        ("ID,Label\na,\n", r"row 2 .*empty"),
        ("Id,Labels\na,1\n", r"missing column"),
    ],
)
def test_kaggle_errors(tmp_path, body, pattern):
    p = tmp_path / "train.csv"
    p.write_text(body)
    with pytest.raises(InputError, match=pattern):
        read_kaggle_labels(p)


def test_public_hpa_table(tmp_path):
    p = tmp_path / "kaggle_2021.tsv"
    p.write_text(
        "Image,Label,Label_idx,Cellline,in_trainset\n"
        "https://images.proteinatlas.org/921/B9_1,x,13|16,A-431,False\n"
        "https://images.proteinatlas.org/922/B9_2,x,1,A-431,True\n"
        "https://images.proteinatlas.org/923/B9_3,x,,A-431,False\n"
        "https://images.proteinatlas.org/924/B9_4,x,3,,False\n"
        "925/C1_1,x,18,U2OS,False\n"
    )
    t = read_public_hpa_labels(p)
    assert t.ids == ["B9_1", "C1_1"] and t.labels == [[13, 16], [18]]
    p.write_text("Image,Label_idx,in_trainset\na/b,20,False\n")
    with pytest.raises(InputError, match="row 2"):
        read_public_hpa_labels(p)


def test_folds_deterministic_and_stratified(hpa_real):
    full = read_labels(hpa_real / "train-2021-labels.csv")
    sub = type(full)(full.ids[:2000], full.labels[:2000])
    a = make_folds(sub, 5, seed=0)
    b = make_folds(sub, 5, seed=0)
    c = make_folds(sub, 5, seed=1)
    assert a.equals(b) and not a.equals(c)
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]
    y = sub.y
    for k in range(NUM_CLASSES):
        n = int(y[:, k].sum())
        if n >= 5:  # every class with enough fields is spread over all folds
            per_fold = np.bincount(a["fold"][y[:, k] > 0], minlength=5)
            assert per_fold.min() >= 1, (k, per_fold)
            assert per_fold.max() - per_fold.min() <= max(2, n // 10), (k, per_fold)


def test_folds_cli(tmp_path, hpa_real, cli):
    out = tmp_path / "folds.csv"
    r = cli("folds", hpa_real / "train-2021-labels.csv", "-o", out, "--n-folds", "5", "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("ID,fold\n")
    r = cli("folds", tmp_path / "missing.csv", "-o", out)
    assert (
        r.returncode != 0
        and r.stderr.strip().startswith("error:")
        and len(r.stderr.strip().splitlines()) == 1
    )
