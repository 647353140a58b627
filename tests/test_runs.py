"""The run folder contract (hpasc.io.runs): what a tiny training wrote, read back by one owner."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cam_helpers import ROOT, synth_data, tiny_config
from hpasc.data.crops import CropSourceConfig
from hpasc.errors import InputError
from hpasc.io import runs
from hpasc.io.store import Store
from hpasc.prepare import write_crops

FIELD = 128
CROP = 16


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """fold 0 of the tiny image-level config, one epoch, best-*.ckpt on valid/map."""
    from hpasc.train.image_level import train_fold

    root = tmp_path_factory.mktemp("runs-image")
    data = synth_data(root / "synth", n_images=6, size=FIELD)
    over = ("trainer.max_epochs=1", "predict.after_fit=false", f"data.crop_size={FIELD}")
    train_fold(tiny_config(data, *over), 0, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def cell_run(tmp_path_factory) -> Path:
    """fold 1 of the tiny cell-level config on random 16-pixel crops, one epoch."""
    from hpasc.runconfig.cell_level import load_cell_level_config
    from hpasc.train.cell_level import train_fold

    root = tmp_path_factory.mktemp("runs-cell")
    rng = np.random.default_rng(0)
    store, rows = Store(str(root / "crops")), []
    for i in range(8):
        n = 0 if i == 3 else 3  # a field without cells: its record says nothing of the size
        crops = rng.integers(0, 256, (n, 8, CROP, CROP), dtype=np.uint8)
        write_crops(store, f"f{i}", crops, np.arange(1, n + 1, dtype=np.int32))
        rows.append((f"f{i}", str(i % 3)))
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(root / "train.csv", index=False)
    over = [
        f"data.root={root}",
        "trainer.max_epochs=1",
        "trainer.monitor=null",
        "data.batch_size=4",
        "predict.after_fit=false",
    ]
    cfg = load_cell_level_config(ROOT / "configs" / "cell-level" / "tiny.yaml", over)
    cfg.data.sources = [CropSourceConfig(crops="crops", labels="train.csv")]
    train_fold(cfg, 1, root / "run")
    return root / "run"


def _copy_config(src: Path, run: Path, fold: int, **data) -> Path:
    """A fold folder holding only ``src``'s config (``data`` keys replaced): no checkpoint."""
    cfg = yaml.safe_load(src.read_text())
    cfg["data"].update(data)
    out = runs.fold_dir(run, fold)
    out.mkdir(parents=True)
    runs.config_path(out).write_text(yaml.safe_dump(cfg))
    return out


def test_open_a_trained_image_level_run(image_run):
    run = runs.open_run(image_run)
    assert run.path == image_run and run.kind == runs.IMAGE_LEVEL and run.fold_indices == [0]
    fold = run.fold(0)
    assert fold.config_path == image_run / "fold-0" / "config.yaml"
    assert fold.config["model"]["arch"] == "test_efficientnet"
    assert Path(fold.config["data"]["root"]).is_absolute()  # saved so it works from anywhere
    assert fold.checkpoint("last") == image_run / "fold-0" / "checkpoints" / "last.ckpt"
    best = fold.checkpoint("best")
    assert best.parent == fold.last_checkpoint.parent and best.name.startswith("best-")
    assert fold.checkpoint(str(best)) == best
    logged = pd.read_csv(fold.metrics_path)
    assert "epoch" in logged and logged["valid/map"].notna().any()
    assert run.input_size == FIELD
    assert fold.valid_cells.name == "valid_cells.parquet" and not fold.valid_cells.exists()
    with pytest.raises(InputError, match=r"has no fold-1 \(it has folds \[0\]\)"):
        run.fold(1)
    # a fold folder is a run of one fold; lists of both are found fold by fold
    assert runs.open_run(image_run / "fold-0").folds == run.folds
    assert runs.find_fold_dirs([image_run, image_run / "fold-0"]) == [fold.path] * 2


def test_open_a_trained_cell_level_run(cell_run):
    run = runs.open_run(cell_run)
    assert run.kind == runs.CELL_LEVEL and run.fold_indices == [1]
    assert run.config["model"]["arch"] == "test_resnet"
    assert run.input_size == CROP  # from the first record that holds cells
    assert run.fold(1).checkpoint().is_file()
    with pytest.raises(InputError, match=r"no checkpoints/best-\*\.ckpt.*monitored"):
        run.fold(1).checkpoint("best")  # trained without a monitor


def test_readers_load_models_through_the_run(image_run, cell_run):
    from hpasc.predict.cell_level import load_cell_fold
    from hpasc.predict.image_level import load_fold

    _, cfg = load_fold(runs.open_run(image_run).folds[0].path)
    assert cfg.model.arch == "test_efficientnet"
    _, cfg = load_cell_fold(runs.open_run(cell_run).folds[0].path, checkpoint="last")
    assert cfg.model.arch == "test_resnet"


def test_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(InputError, match=rf"{tmp_path} is not a run folder: it has no fold-<k>/"):
        runs.open_run(tmp_path)
    with pytest.raises(InputError, match="not a run folder: it does not exist"):
        runs.open_run(tmp_path / "nowhere")
    (tmp_path / "fold-0").mkdir()  # a fold folder without its config is no trained fold
    with pytest.raises(InputError, match="is not a run folder"):
        runs.open_run(tmp_path)
    with pytest.raises(InputError, match=r"fold-0 is not a trained fold folder: config.yaml"):
        runs.open_fold(tmp_path / "fold-0")
    with pytest.raises(InputError, match="expected a name like fold-0"):
        runs.open_fold(tmp_path)
    (tmp_path / "fold-0" / "config.yaml").write_text("[not, a, mapping]")
    with pytest.raises(InputError, match="config.yaml is not a config mapping"):
        runs.open_run(tmp_path)


def test_a_fold_without_checkpoints(image_run, tmp_path):
    fold_path = _copy_config(runs.config_path(image_run / "fold-0"), tmp_path / "run", 2)
    fold = runs.open_run(tmp_path / "run").fold(2)
    with pytest.raises(InputError, match=r"checkpoint not found: .*fold-2/checkpoints/last.ckpt"):
        fold.checkpoint("last")
    with pytest.raises(InputError, match="fold-2: no checkpoints/best"):
        fold.checkpoint("best")
    from hpasc.predict.image_level import load_fold

    with pytest.raises(InputError, match="checkpoint not found"):
        load_fold(fold_path)


def test_moved_data_and_mixed_kinds(image_run, cell_run, tmp_path):
    _copy_config(runs.config_path(image_run / "fold-0"), tmp_path / "run", 0, root="/moved")
    assert runs.open_run(tmp_path / "run").input_size is None  # callers ask for --size
    _copy_config(runs.config_path(cell_run / "fold-1"), tmp_path / "run", 1)
    with pytest.raises(InputError, match="mixes cell-level and image-level folds"):
        runs.open_run(tmp_path / "run")


def test_cli_names_a_folder_that_is_not_a_run(tmp_path, cli):
    shutil.rmtree(tmp_path / "empty", ignore_errors=True)
    (tmp_path / "empty").mkdir()
    r = cli("oof", tmp_path / "empty", "-o", tmp_path / "oof.parquet")
    assert r.returncode == 2
    assert f"error: {tmp_path / 'empty'} is not a run folder" in r.stderr


def test_oof_asks_for_the_verb_of_the_run_kind(image_run, cell_run):
    from hpasc.predict.oof import join_oof

    # the fold's expected fields are read from its config first, then its missing tables named
    with pytest.raises(InputError, match=r"valid_cells.parquet\); run `hpasc predict cell-level"):
        join_oof([cell_run])
    with pytest.raises(InputError, match=r"run `hpasc predict image-level .*fold-0 --split valid`"):
        join_oof([image_run])
