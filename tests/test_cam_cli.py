"""Image-level configs and the CLI: train --fold all, predict, oof on synthetic data."""

from pathlib import Path

import pandas as pd
import pytest

from cam_helpers import ROOT, synth_data
from hpasc.errors import ConfigError, InputError
from hpasc.predict.oof import join_oof
from hpasc.runconfig.image_level import load_image_level_config
from hpasc.train.image_level import train_fold

CONFIGS = sorted((ROOT / "configs" / "image-level").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_image_level_config(path)
    assert cfg.name == path.stem
    assert cfg.data.sources and all(s.images and s.masks and s.labels for s in cfg.data.sources)


def test_reference_configs_carry_the_reference_numbers():
    b2 = load_image_level_config(ROOT / "configs/image-level/b2-768.yaml")
    assert (b2.optim.lr, b2.optim.schedule, b2.optim.warmup_epochs, b2.optim.warmup_factor) == (
        1e-3,
        "cos",
        5,
        0.1,
    )
    assert (b2.trainer.max_epochs, b2.data.n_folds, b2.data.batch_size, b2.data.crop_size) == (
        50,
        5,
        8,
        512,
    )
    assert (
        b2.loss.objective,
        b2.consistency.criterion,
        b2.augment.cutmix_heavy_p,
        b2.augment.cutmix_p,
    ) == ("focal", "ce", 1.0, 0.0)
    assert b2.model.instance_norm_input and b2.model.head == "conv" and len(b2.data.sources) == 2
    b7 = load_image_level_config(ROOT / "configs/image-level/b7-768.yaml")
    assert b7.data.batch_size == 4 and "b7" in b7.model.arch
    hi = load_image_level_config(ROOT / "configs/image-level/b2-1536-from-768.yaml")
    assert "{fold}" in hi.model.init_from and hi.data.crop_size == 1024 and hi.data.batch_size == 4
    cos = load_image_level_config(ROOT / "configs/image-level/b2-768-stage3-cos.yaml")
    assert cos.model.head == "cosine" and all(s.pseudo_labels for s in cos.data.sources)


def test_overrides_and_errors():
    path = ROOT / "configs/image-level/tiny.yaml"
    cfg = load_image_level_config(
        path, ["optim.lr=3e-4", "data.crop_size=null", "model.head=cosine"]
    )
    assert cfg.optim.lr == 3e-4 and cfg.data.crop_size is None and cfg.model.head == "cosine"
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_image_level_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="consistency.criterion"):
        load_image_level_config(path, ["consistency.criterion=huber"])


@pytest.mark.slow
def test_train_predict_oof_from_the_cli(cli, tmp_path):
    data = synth_data(tmp_path / "synth", n_images=10, size=160)
    run = tmp_path / "run"
    tiny = ROOT / "configs/image-level/tiny.yaml"
    args = [
        "train",
        "image-level",
        tiny,
        f"data.root={data}",
        "trainer.max_epochs=1",
        "predict.tta=none",
    ]
    cli(*args, "--fold", "all", "--run-dir", run, check=True)
    for k in (0, 1):
        assert (run / f"fold-{k}" / "checkpoints" / "last.ckpt").is_file()
        assert (run / f"fold-{k}" / "valid_cells.parquet").is_file()

    out = tmp_path / "test.parquet"
    cli(
        "predict",
        "image-level",
        run,
        "--images",
        data / "images",
        "--masks",
        data / "masks",
        "--split",
        "test",
        "--tta",
        "d4",
        "-o",
        out,
        check=True,
    )
    cells, images = pd.read_parquet(out), pd.read_parquet(tmp_path / "test.images.parquet")
    assert len(images) == 10 and cells["image_id"].nunique() == 10
    assert list(cells.columns[:3]) == ["image_id", "cell_id", "p00"]

    oof = tmp_path / "oof.parquet"
    cli("oof", run, "-o", oof, check=True)
    table = pd.read_parquet(oof)
    assert table["image_id"].nunique() == 10 and not table.duplicated(["image_id", "cell_id"]).any()
    truth = pd.read_csv(data / "cells.csv", dtype={"image_id": str})
    assert set(zip(table.image_id, table.cell_id, strict=True)) == set(
        zip(truth.image_id, truth.cell_id, strict=True)
    )

    # stage 2 trains on the out-of-fold table as per-cell pseudo labels
    stage2 = load_image_level_config(
        tiny,
        [
            f"data.root={data}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "predict.after_fit=false",
        ],
    )
    stage2.data.sources[0].pseudo_labels = str(oof)
    module_dir = train_fold(stage2, 1, tmp_path / "stage2")
    assert (module_dir / "checkpoints" / "last.ckpt").is_file()

    with pytest.raises(InputError, match="no out-of-fold prediction"):
        join_oof([run / "fold-0"])
    with pytest.raises(InputError, match="more than one fold"):
        join_oof([run, run / "fold-1"])


def test_sources_are_overridden_by_index():
    cfg = load_image_level_config(
        ROOT / "configs/image-level/b2-768.yaml",
        ["data.sources.0.pseudo_labels=a.parquet", "data.sources.1.pseudo_labels=a.parquet"],
    )
    # typed as an override (command line or recipe): relative to the current directory
    assert [s.pseudo_labels for s in cfg.data.sources] == [str(Path.cwd() / "a.parquet")] * 2
    with pytest.raises(ConfigError, match="pseudo_labels on every source"):
        load_image_level_config(
            ROOT / "configs/image-level/b2-768.yaml", ["data.sources.0.pseudo_labels=a.parquet"]
        )
