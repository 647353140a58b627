"""Uniform cell sampling (data.sampling: uniform): random access into crop sets + RandomSampler."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from hpasc.data.crops import CropCells, CropSourceConfig, build_cell_set, uniform_loader
from hpasc.errors import ConfigError
from hpasc.io.store import Store
from hpasc.prepare import read_crops, write_crops

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cell-level"
SIDE = 8


def _crop_set(root: Path, n_fields: int = 9, name: str = "crops") -> tuple[str, list[str]]:
    """Random records, every third field without cells, and a Kaggle label table."""
    rng = np.random.default_rng(0)
    store = Store(str(root / name))
    ids, rows = [], []
    for i in range(n_fields):
        fid = f"f{i}"
        n = 0 if i % 3 == 2 else int(rng.integers(2, 6))
        cell_ids = np.sort(rng.choice(np.arange(1, 30), n, replace=False))
        write_crops(store, fid, rng.integers(0, 256, (n, 8, SIDE, SIDE), dtype=np.uint8), cell_ids)
        ids.append(fid)
        rows.append((fid, str(i % 19)))
    store.close()
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(root / "train.csv", index=False)
    return str(root / name), ids


def test_items_are_the_cells_of_their_records(tmp_path):
    crops, ids = _crop_set(tmp_path)
    labels = np.eye(19, dtype=np.float32)[np.arange(len(ids)) % 19]
    cells = build_cell_set(crops, ids, labels, progress=False)
    data = CropCells(cells)
    assert len(data) == cells.n_cells
    field = cells.cell_field()
    for row in range(len(data)):
        crop, target, got = data[row]
        all_crops, cell_ids = read_crops(crops, ids[field[row]])
        k = cell_ids.tolist().index(cells.cell_ids[row])
        assert got == row and crop.dtype == torch.uint8
        np.testing.assert_array_equal(crop.numpy(), all_crops[k])
        np.testing.assert_array_equal(target.numpy(), labels[field[row]])


@pytest.mark.parametrize("workers, name", [(0, "crops"), (2, "crops"), (2, "crops.zip/sub")])
def test_an_epoch_is_a_seeded_permutation_of_all_cells(tmp_path, workers, name):
    crops, ids = _crop_set(tmp_path, name=name)
    cells = build_cell_set(crops, ids, progress=False)
    loader = uniform_loader(cells, batch_size=4, num_workers=workers, seed=7)
    field = cells.cell_field()
    batches = []
    for batch, _, row in loader:  # forked workers read their cells right, zip stores too
        batches.append(row.tolist())
        for crop, r in zip(batch, batches[-1], strict=True):
            got, cell_ids = read_crops(crops, ids[field[r]])
            np.testing.assert_array_equal(
                crop.numpy(), got[cell_ids.tolist().index(cells.cell_ids[r])]
            )
    order = [r for b in batches for r in b]
    # every cell once per epoch, the last partial batch kept (as the reference's RandomSampler)
    assert sorted(order) == list(range(cells.n_cells))
    assert len(batches) == -(-cells.n_cells // 4)
    expected = torch.randperm(cells.n_cells, generator=torch.Generator().manual_seed(7))
    assert order == expected.tolist()
    second = [r for _, _, row in loader for r in row.tolist()]
    assert second != order and sorted(second) == sorted(order)  # reshuffled each epoch


def test_config_choice_and_reference_configs():
    from hpasc.runconfig.cell_level import load_cell_level_config

    for name in (
        "resnest50-from768-stage2",
        "resnest50-from768-stage3",
        "resnest50-from1536-stage3-cos",
    ):
        assert load_cell_level_config(CONFIGS / f"{name}.yaml").data.sampling == "uniform"
    assert load_cell_level_config(CONFIGS / "tiny.yaml").data.sampling == "stream"
    with pytest.raises(ConfigError, match="data.sampling"):
        load_cell_level_config(CONFIGS / "tiny.yaml", ["data.sampling=random"])


class _Rows(L.Callback):
    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows += batch[2].tolist()


def test_training_with_uniform_sampling_sees_every_cell(tmp_path):
    from hpasc.runconfig.cell_level import load_cell_level_config
    from hpasc.train.cell_level import train_fold

    _crop_set(tmp_path, n_fields=12)
    over = [
        f"data.root={tmp_path}",
        "trainer.max_epochs=1",
        "data.batch_size=4",
        "data.sampling=uniform",
        "predict.after_fit=false",
        "trainer.monitor=null",
    ]
    cfg = load_cell_level_config(CONFIGS / "tiny.yaml", over)
    cfg.data.sources = [CropSourceConfig(crops="crops", labels="train.csv")]
    seen = _Rows()
    train_fold(cfg, 0, tmp_path / "run", callbacks=[seen])
    assert (tmp_path / "run" / "fold-0" / "checkpoints" / "last.ckpt").exists()
    # all training cells of the fold, each once (a stream would drop a partial batch)
    from hpasc.data.crops import load_sources

    train = load_sources(cfg.data, 0, "train")
    assert sorted(seen.rows) == list(range(train.n_cells))
