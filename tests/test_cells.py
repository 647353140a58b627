"""Prediction tables: make, validate, read/write, average by key."""

import numpy as np
import pandas as pd
import pytest

from hpasc.cells import (
    PROB_COLUMNS,
    average_tables,
    make_table,
    read_table,
    validate_table,
    write_table,
)
from hpasc.errors import InputError


def random_table(rng, ids=("a", "b", "c"), cells=4):
    image_ids = np.repeat(ids, cells)
    cell_ids = np.tile(np.arange(1, cells + 1), len(ids))
    return make_table(image_ids, cell_ids, rng.random((image_ids.size, 19)))


def test_columns_and_types():
    t = make_table(["x"], [3], np.full((1, 19), 0.25))
    assert PROB_COLUMNS[0] == "p00" and PROB_COLUMNS[-1] == "p18" and len(PROB_COLUMNS) == 19
    assert list(t.columns) == ["image_id", "cell_id", *PROB_COLUMNS]
    assert t["cell_id"].dtype == np.int64
    assert all(t[c].dtype == np.float32 for c in PROB_COLUMNS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns="p07"), "missing columns"),
        (lambda t: t.assign(p03=t["p03"].astype(np.float64)), "float32"),
        (lambda t: t.assign(p05=np.float32(1.5)), "p05 = 1.5"),
        (lambda t: t.assign(p05=np.float32(np.nan)), "not a probability"),
        (lambda t: t.assign(cell_id=t["cell_id"].astype(float)), "cell_id"),
        (lambda t: t.assign(image_id=1), "image_id"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "duplicate"),
    ],
)
def test_validate_names_the_problem(change, message):
    t = random_table(np.random.default_rng(0))
    validate_table(t)
    with pytest.raises(InputError, match=message):
        validate_table(change(t), "x.parquet")


def test_write_read_roundtrip(tmp_path):
    t = random_table(np.random.default_rng(1))
    path = tmp_path / "sub" / "t.parquet"
    write_table(t, path)
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]  # no temporary left
    back = read_table(path)
    np.testing.assert_array_equal(back[PROB_COLUMNS].to_numpy(), t[PROB_COLUMNS].to_numpy())
    assert back["image_id"].tolist() == t["image_id"].tolist()
    with pytest.raises(InputError, match="not found"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read"):
        read_table(tmp_path / "bad.parquet")


def test_average_joins_on_keys_not_row_order():
    rng = np.random.default_rng(2)
    a = random_table(rng)
    b = random_table(rng)
    shuffled = b.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert not shuffled["cell_id"].equals(b["cell_id"])
    avg = average_tables([a, shuffled], weights=[1, 3])
    expected = (a[PROB_COLUMNS].to_numpy(np.float64) + 3 * b[PROB_COLUMNS].to_numpy(np.float64)) / 4
    order = avg.set_index(["image_id", "cell_id"]).loc[
        list(zip(a.image_id, a.cell_id, strict=True))
    ]
    np.testing.assert_allclose(order[PROB_COLUMNS].to_numpy(), expected, rtol=1e-6)
    assert avg[PROB_COLUMNS].dtypes.eq(np.float32).all()


def test_average_missing_key_is_an_error_naming_it():
    rng = np.random.default_rng(4)
    a = random_table(rng)
    b = random_table(rng).iloc[1:]  # lacks ('a', 1)
    with pytest.raises(InputError, match=r"\('a', 1\) missing from \['#2'\]"):
        average_tables([a, b])
    avg = average_tables([a, b], weights=[1, 1], allow_missing=True)
    assert len(avg) == len(a)
    row = avg[(avg.image_id == "a") & (avg.cell_id == 1)]
    np.testing.assert_allclose(row[PROB_COLUMNS].to_numpy()[0], a[PROB_COLUMNS].to_numpy()[0])
    with pytest.raises(InputError, match="weight 0"):
        average_tables([a, b], weights=[0, 1], allow_missing=True)


def test_average_reads_paths_and_checks_weights(tmp_path):
    rng = np.random.default_rng(5)
    a, b = random_table(rng), random_table(rng)
    write_table(a, tmp_path / "a.parquet")
    write_table(b, tmp_path / "b.parquet")
    from_paths = average_tables([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    pd.testing.assert_frame_equal(from_paths, average_tables([a, b]))
    with pytest.raises(InputError, match="weights"):
        average_tables([a, b], weights=[1])
    with pytest.raises(InputError, match="non-negative"):
        average_tables([a, b], weights=[1, -1])
