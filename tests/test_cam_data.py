"""Field datasets: folds, renumbered masks, pseudo-label lookup, augmentation seeding, collate."""

import numpy as np
import pandas as pd
import pytest

from cam_helpers import synth_data, tiny_config
from hpasc.cells import make_table
from hpasc.data.fields import (
    FieldDataset,
    PseudoLabels,
    collate_fields,
    load_field_table,
    renumber_cells,
)
from hpasc.errors import InputError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_data(tmp_path_factory.mktemp("cam-data") / "synth", n_images=8, size=160)


def test_renumber_cells():
    mask = np.array([[0, 5, 5], [300, 0, 7]], np.uint16)
    local, ids = renumber_cells(mask)
    assert ids.tolist() == [5, 7, 300]
    assert local.tolist() == [[0, 1, 1], [3, 0, 2]] and local.dtype == np.int32


def test_field_table_folds_and_sources(data):
    cfg = tiny_config(data)
    table = load_field_table(cfg.data)
    assert len(table) == 8 and set(table.fold.tolist()) == {0, 1}
    train, valid = table.split(1)
    assert sorted(train.tolist() + valid.tolist()) == list(range(8))
    assert table.y[:, 18].all()  # synth fields always have Negative cells


def test_pseudo_labels_follow_keys_not_row_order():
    rng = np.random.default_rng(0)
    ids = ["a"] * 3 + ["b"] * 2
    cells = np.array([4, 1, 9, 2, 1])
    probs = rng.random((5, 19)).astype(np.float32)
    table = make_table(ids, cells, probs)
    shuffled = table.sample(frac=1.0, random_state=1).reset_index(drop=True)
    for t in (table, shuffled):
        lookup = PseudoLabels(t)
        np.testing.assert_array_equal(lookup.targets("a", np.array([1, 4, 9])), probs[[1, 0, 2]])
        np.testing.assert_array_equal(lookup.targets("b", np.array([1, 2])), probs[[4, 3]])
    with pytest.raises(InputError, match=r"cell\(s\) \[5\]"):
        PseudoLabels(table).targets("a", np.array([1, 5]))
    with pytest.raises(InputError, match="no pseudo labels for field 'c'"):
        PseudoLabels(table).targets("c", np.array([1]))


def test_train_items_targets_map_to_the_right_cells(data):
    cfg = tiny_config(data)
    table = load_field_table(cfg.data)
    ds0 = FieldDataset(table, [0, 1], cfg.data, "predict")
    rows = []
    for i in range(2):
        it = ds0[i]
        for cid in it["cell_ids"]:  # target of cell id c = c/1000 in every class
            rows.append((table.ids[i], int(cid), np.full(19, cid / 1000, np.float32)))
    t = make_table([r[0] for r in rows], [r[1] for r in rows], np.stack([r[2] for r in rows]))
    ds = FieldDataset(table, [0, 1], cfg.data, "train", PseudoLabels(t.iloc[::-1]))
    batch = collate_fields([ds[0], ds[1]])
    k = batch["cell_ids"].shape[1]
    assert batch["cell_targets"].shape == (2, k, 19)
    for b in range(2):
        n = int((batch["cell_ids"][b] > 0).sum())
        expected = batch["cell_ids"][b, :n].numpy() / 1000
        np.testing.assert_allclose(batch["cell_targets"][b, :n, 0].numpy(), expected, rtol=1e-6)
        assert np.isnan(batch["cell_targets"][b, n:].numpy()).all()
        # renumbered mask: local id j is original cell cell_ids[j-1]
        assert int(batch["mask"][b].max()) <= n
    assert batch["heavy"].shape == batch["image"].shape == (2, 4, 160, 160)


def test_missing_pseudo_labels_of_a_field_is_an_error(data):
    cfg = tiny_config(data)
    table = load_field_table(cfg.data)
    t = make_table([table.ids[0]], [1], np.zeros((1, 19)))
    # with the list of predicted fields (an OOF table's images.parquet): up front
    with pytest.raises(InputError, match="no pseudo labels for 1 field"):
        FieldDataset(table, [0, 1], cfg.data, "train", PseudoLabels(t, fields=[table.ids[0]]))
    # without it, a field with cells but no rows fails when read (a zero-cell field would not)
    ds = FieldDataset(table, [0, 1], cfg.data, "train", PseudoLabels(t))
    with pytest.raises(InputError, match=f"no pseudo labels for field '{table.ids[1]}'"):
        ds[1]


def test_augmentation_is_seeded_by_epoch_and_index(data):
    cfg = tiny_config(data, "data.crop_size=96")
    table = load_field_table(cfg.data)
    ds = FieldDataset(table, [0, 1, 2], cfg.data, "train", seed=5)
    first = ds[1]["image"]
    assert np.array_equal(first, ds[1]["image"])  # same epoch, same draw
    ds.set_epoch(1)
    assert not np.array_equal(first, ds[1]["image"])  # a new epoch, a new crop
    other = FieldDataset(table, [0, 1, 2], cfg.data, "train", seed=5)
    assert np.array_equal(first, other[1]["image"])
    assert first.shape == (4, 96, 96)


def test_valid_and_predict_items(data):
    cfg = tiny_config(data, "data.valid_crop_size=128")
    table = load_field_table(cfg.data)
    valid = FieldDataset(table, [0], cfg.data, "valid")[0]
    assert valid["image"].shape == (4, 128, 128) and "heavy" not in valid
    pred = FieldDataset(table, [0], cfg.data, "predict")[0]
    assert pred["image"].shape == (4, 160, 160)
    # normalisation of the reference: (x/255 - 0.5)/0.125
    raw, _ = FieldDataset(table, [0], cfg.data, "predict").read(0)
    np.testing.assert_allclose(
        pred["image"][1], (raw[..., 1] / 255 - 0.5) / 0.125, rtol=1e-5, atol=1e-5
    )


def test_labelled_fields_without_images_are_named(data, tmp_path):
    labels = pd.read_csv(data / "train.csv")
    labels.loc[len(labels)] = ["ghost-field", "3"]
    labels.to_csv(tmp_path / "train.csv", index=False)
    cfg = tiny_config(data)
    cfg.data.sources[0].labels = str(tmp_path / "train.csv")
    with pytest.raises(InputError, match="ghost-field"):
        load_field_table(cfg.data)


def test_heavy_pixel_augmentation_changes_only_the_heavy_view(data):
    cfg = tiny_config(data, "data.heavy_pixel_aug=[{type: GaussNoise, p: 1.0}]", "data.hflip_p=0")
    table = load_field_table(cfg.data)
    item = FieldDataset(table, [0], cfg.data, "train")[0]
    plain = FieldDataset(table, [0], tiny_config(data, "data.hflip_p=0").data, "train")[0]
    assert np.array_equal(item["image"], plain["image"])
    assert not np.array_equal(item["heavy"], item["image"])


def test_bad_augmentation_spec_is_a_config_error(data):
    from hpasc.errors import ConfigError

    cfg = tiny_config(data, "data.heavy_pixel_aug=[{type: NoSuchTransform}]")
    with pytest.raises(ConfigError, match="NoSuchTransform"):
        FieldDataset(load_field_table(cfg.data), [0], cfg.data, "train")
