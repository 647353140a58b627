"""Cell-level model: crop data and soft labels, CutMix targets, D4 TTA, training, CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from hpasc.cells import make_table
from hpasc.classes import NUM_CLASSES
from hpasc.data.augment import cutmix, d4_transform, sample_cutmix_box
from hpasc.data.crops import (
    CropSourceConfig,
    CropStream,
    build_cell_set,
    load_sources,
    stream_loader,
)
from hpasc.data.fields import PseudoLabels
from hpasc.errors import InputError
from hpasc.io.store import Store
from hpasc.prepare import write_crops
from hpasc.runconfig.cell_level import CellDataConfig, CellLevelConfig, validate
from hpasc.train.cell_level_module import (
    CellLevelModule,
    keep_easiest,
    mix_targets,
    per_sample_loss,
)

SIZE = 16


def _crop_set(root: Path, n_fields: int = 12, seed: int = 0) -> tuple[str, list[str], dict]:
    """A crop set of random records (some fields without cells) and a Kaggle label table."""
    rng = np.random.default_rng(seed)
    store = Store(str(root / "crops"))
    ids, cells, rows = [], {}, []
    for i in range(n_fields):
        fid = f"field-{i:02d}"
        n = 0 if i % 5 == 4 else int(rng.integers(1, 7))
        cell_ids = np.sort(rng.choice(np.arange(1, 40), n, replace=False)).astype(np.int32)
        write_crops(store, fid, rng.integers(0, 256, (n, 8, SIZE, SIZE), dtype=np.uint8), cell_ids)
        ids.append(fid)
        cells[fid] = cell_ids
        rows.append((fid, "|".join(map(str, sorted(set(rng.integers(0, 19, 2).tolist()))))))
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(root / "train.csv", index=False)
    return str(root / "crops"), ids, cells


def _soft_table(cells: dict, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    image_ids = [f for f, c in cells.items() for _ in c]
    cell_ids = np.concatenate([c for c in cells.values()]).astype(np.int64)
    return make_table(image_ids, cell_ids, rng.random((len(cell_ids), NUM_CLASSES)))


# ------------------------------------------------------------------------------ soft labels


def test_soft_labels_are_looked_up_by_key(tmp_path):
    crops, ids, cells = _crop_set(tmp_path)
    table = _soft_table(cells)
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a = build_cell_set(crops, ids, soft_labels=PseudoLabels(table), progress=False)
    b = build_cell_set(crops, ids, soft_labels=PseudoLabels(shuffled), progress=False)
    np.testing.assert_array_equal(a.targets, b.targets)
    # and each cell got its own row of the table
    keys = a.keys()
    want = table.set_index(["image_id", "cell_id"]).loc[
        list(zip(keys.image_id, keys.cell_id, strict=True))
    ]
    np.testing.assert_allclose(a.targets, want.to_numpy(np.float32))


def test_missing_soft_label_names_the_cell(tmp_path):
    crops, ids, cells = _crop_set(tmp_path)
    table = _soft_table(cells)
    gone = table.iloc[7]
    table = table.drop(index=7)
    with pytest.raises(InputError, match=rf"{gone.image_id}.*{gone.cell_id}"):
        build_cell_set(crops, ids, soft_labels=PseudoLabels(table), progress=False)


def test_broadcast_labels_and_folds(tmp_path):
    crops, ids, cells = _crop_set(tmp_path)
    data = CellDataConfig(
        root=str(tmp_path), n_folds=3, sources=[CropSourceConfig(crops="crops", labels="train.csv")]
    )
    train, valid = (
        load_sources(data, 0, "train", progress=False),
        load_sources(data, 0, "valid", progress=False),
    )
    assert set(train.image_ids).isdisjoint(valid.image_ids)
    assert set(train.image_ids) | set(valid.image_ids) == set(ids)
    np.testing.assert_array_equal(train.targets, train.broadcast_labels())
    assert train.n_cells + valid.n_cells == sum(len(c) for c in cells.values())


def test_sources_are_concatenated(tmp_path):
    """Kaggle train + a public-HPA table, each with its own crop set and folds; one soft table."""
    _, ids_a, cells_a = _crop_set(tmp_path / "a", n_fields=10, seed=0)
    rng = np.random.default_rng(5)
    store = Store(str(tmp_path / "b" / "crops"))
    cells_b = {}
    for i in range(8):
        fid = f"{100 + i}_A1_{i}"
        cells_b[fid] = np.arange(1, 1 + int(rng.integers(1, 4)), dtype=np.int32)
        crops = np.full((len(cells_b[fid]), 8, SIZE, SIZE), 200 + i, np.uint8)
        write_crops(store, fid, crops, cells_b[fid])
    public = pd.DataFrame(
        {
            "Image": [f"https://hpa/images/{f}" for f in cells_b],
            "Label_idx": ["3|7"] * len(cells_b),
            "in_trainset": ["False"] * len(cells_b),
            "Cellline": ["U-2 OS"] * len(cells_b),
        }
    )
    public.to_csv(tmp_path / "b" / "public.csv", index=False)
    soft = _soft_table({**cells_a, **cells_b})
    soft.to_parquet(tmp_path / "soft.parquet", index=False)
    data = CellDataConfig(
        root=str(tmp_path),
        n_folds=2,
        sources=[
            CropSourceConfig(crops="a/crops", labels="a/train.csv", soft_labels="soft.parquet"),
            CropSourceConfig(crops="b/crops", labels="b/public.csv", soft_labels="soft.parquet"),
        ],
    )
    every = load_sources(data, part="all", progress=False)
    assert every.image_ids == ids_a + list(cells_b)
    assert every.n_cells == sum(map(len, cells_a.values())) + sum(map(len, cells_b.values()))
    keys = every.keys()
    want = soft.set_index(["image_id", "cell_id"]).loc[
        list(zip(keys.image_id, keys.cell_id, strict=True))
    ]
    np.testing.assert_allclose(every.targets, want.to_numpy(np.float32))
    for fold in (0, 1):  # every source is split into folds of its own
        valid = load_sources(data, fold, "valid", progress=False)
        assert {f[:3].isdigit() for f in valid.image_ids} == {True, False}
    # crops come from their own store: the public fields' crops hold 200 + i
    batches = list(stream_loader(CropStream(every, 64)))
    crops, _, rows = batches[0]
    real = rows >= 0  # (the rest pads the batch)
    public = torch.as_tensor(every.cell_field()[rows[real].numpy()] >= len(ids_a))
    assert public.any() and (crops[real][public] >= 200).all()
    assert (crops[real][~public] < 200).any()


# -------------------------------------------------------------------------------- streaming


def _rows(stream: CropStream, workers: int) -> list[list[int]]:
    stream.num_workers = workers
    batches = [row.tolist() for _, _, row in stream_loader(stream)]
    assert len(batches) * stream.batch_size == len(stream)
    return batches


def test_stream_reads_each_field_once_and_splits_ranks(tmp_path, monkeypatch):
    from hpasc.io import cropset

    crops, ids, _ = _crop_set(tmp_path, n_fields=20)
    cell_set = build_cell_set(crops, ids, progress=False)
    reads: list[str] = []
    real = cropset.read_record
    monkeypatch.setattr(cropset, "read_record", lambda s, f: (reads.append(f), real(s, f))[1])

    # evaluation: every cell exactly once over two ranks, equal batch counts, padding = -1
    seen, lengths = [], []
    for rank in range(2):
        stream = CropStream(cell_set, 4, rank=rank, world_size=2)
        batches = _rows(stream, 0)
        lengths.append(len(batches))
        seen += [r for b in batches for r in b if r >= 0]
    assert lengths[0] == lengths[1]
    assert sorted(seen) == list(range(cell_set.n_cells))
    assert sorted(reads) == sorted(i for i, n in zip(ids, cell_set.cell_counts(), strict=True) if n)

    # training: whole batches only, no cell twice, each field read at most once per epoch
    reads.clear()
    stream = CropStream(cell_set, 4, train=True, seed=1, buffer_size=8)
    first = [r for b in _rows(stream, 0) for r in b]
    assert len(first) == len(set(first)) and len(first) >= cell_set.n_cells - 3
    assert len(reads) == len(set(reads))
    stream.set_epoch(1)
    assert [r for b in _rows(stream, 0) for r in b] != first  # a new shuffle per epoch

    # two DataLoader worker processes: each reads its own fields, whole batches, all cells once
    rows = [r for b in _rows(CropStream(cell_set, 4), 2) for r in b if r >= 0]
    assert sorted(rows) == list(range(cell_set.n_cells))


# ------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_lambda_is_the_unmixed_fraction(seed):
    rng = np.random.default_rng(seed)
    b, h, w = 5, 24, 20
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 2, h, w)
    box = sample_cutmix_box(b, h, w, rng)
    mixed = cutmix(x, [box])
    for i in range(b):
        if box.perm[i] == i:
            continue
        own = (mixed[i, 0] == i).float().mean().item()
        assert own == pytest.approx(box.lam)
    y = torch.eye(b)
    np.testing.assert_allclose(
        mix_targets(y, box).numpy(), (box.lam * y + (1 - box.lam) * y[list(box.perm)]).numpy()
    )


def test_exclusion_keeps_the_easiest():
    losses = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    assert sorted(keep_easiest(losses, 0.4).tolist()) == [1.0, 2.0, 3.0]
    assert keep_easiest(losses, 0.0).tolist() == losses.tolist()


# ------------------------------------------------------------------------------------ model


def _tiny_cfg(**augment) -> CellLevelConfig:
    cfg = CellLevelConfig()
    cfg.model.arch = "test_resnet"
    for k, v in augment.items():
        setattr(cfg.augment, k, v)
    return validate(cfg)


def test_d4_tta_on_symmetric_crops_gives_identical_passes():
    from hpasc.predict.cell_level import predict_crops

    torch.manual_seed(0)
    model = CellLevelModule(_tiny_cfg()).model.eval()
    s = 17
    yy, xx = np.mgrid[:s, :s] - (s - 1) / 2
    radial = np.cos(np.hypot(yy, xx) / 2.0)  # invariant under every rotation and flip of D4
    x = torch.as_tensor(np.stack([radial * (c + 1) for c in range(8)]), dtype=torch.float32)[None]
    x = (x - x.min()) / (x.max() - x.min())
    with torch.no_grad():
        passes = [torch.sigmoid(model(d4_transform(x, k))) for k in range(8)]
    for p in passes[1:]:
        torch.testing.assert_close(p, passes[0])
    torch.testing.assert_close(predict_crops([model], x, "d4"), predict_crops([model], x, "none"))


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    module = CellLevelModule(_tiny_cfg(d4=False, cutmix_p=0.0))
    x = torch.randint(0, 256, (16, 8, 24, 24), dtype=torch.uint8)
    y = (torch.rand(16, NUM_CLASSES) < 0.3).float()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        for _ in range(15):
            loss = module.training_step((x, y, torch.arange(16)), 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        augmented = CellLevelModule(_tiny_cfg()).training_step((x, y * 0.7, torch.arange(16)), 0)
    assert losses[-1] < 0.8 * losses[0]
    assert torch.isfinite(augmented)
    assert per_sample_loss(
        torch.zeros(2, NUM_CLASSES), torch.full((2, NUM_CLASSES), 0.5)
    ).shape == (2,)


def test_prediction_keeps_fields_without_cells(tmp_path):
    from hpasc.predict.cell_level import predict_cell_set

    crops, ids, cells = _crop_set(tmp_path)
    model = CellLevelModule(_tiny_cfg()).model.eval()
    table, fields = predict_cell_set(
        [model], build_cell_set(crops, ids, progress=False), "none", 8, progress=False
    )
    assert list(fields["image_id"]) == ids  # every field, the empty ones too
    assert len(table) == sum(len(c) for c in cells.values())
    empty = [f for f, c in cells.items() if len(c) == 0]
    assert empty and not table["image_id"].isin(empty).any()
    first = table[table.image_id == ids[0]]
    assert first["cell_id"].tolist() == sorted(cells[ids[0]].tolist())


# -------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_train_predict_oof_cli_on_synthetic_crops(tmp_path, cli):
    data = tmp_path / "synth"
    cli("synth", data, "--n-images", "10", "--size", "128", "--seed", "3", "-q", check=True)
    cli("crop", data / "images", data / "masks", data / "crops", "--size", "24", check=True)
    config = Path(__file__).resolve().parents[1] / "configs" / "cell-level" / "tiny.yaml"
    run = tmp_path / "run"
    over = [f"data.root={data}", "trainer.max_epochs=1", "predict.tta='none'", "data.batch_size=8"]
    r = cli("train", "cell-level", config, *over, "--run-dir", run, check=True)
    assert "fold 1: trained" in r.stdout
    metrics = pd.read_csv(run / "fold-0" / "metrics.csv")
    assert metrics["valid/cell_map"].notna().any() and metrics["valid/map"].notna().any()

    out = tmp_path / "test.parquet"
    cli(
        "predict",
        "cell-level",
        run,
        "--crops",
        data / "crops",
        "--tta",
        "d4",
        "-o",
        out,
        check=True,
    )
    table, fields = pd.read_parquet(out), pd.read_parquet(tmp_path / "test.images.parquet")
    assert len(fields) == 10 and len(table) == len(
        pd.read_parquet(data / "crops" / "cells.parquet")
    )

    r = cli("oof", run, "-o", tmp_path / "oof.parquet", check=True)
    oof = pd.read_parquet(tmp_path / "oof.parquet")
    assert sorted(map(tuple, oof[["image_id", "cell_id"]].to_numpy())) == sorted(
        map(tuple, table[["image_id", "cell_id"]].to_numpy())
    )

    r = cli("train", "cell-level", config, *over, "--run-dir", run, "--fold", "0")
    assert r.returncode != 0 and "--resume" in r.stderr


class _Kill(L.Callback):
    """Dies as epoch 1 starts, after epoch 0's checkpoint was written."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("killed in epoch 1")


class _Epochs(L.Callback):
    """Records the shuffle epoch the training stream had when each epoch began."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            stream = trainer.train_dataloader.dataset
            self.seen.append((trainer.current_epoch, stream.epoch))


def test_resume_continues_from_last_checkpoint(tmp_path):
    from hpasc.errors import OutputError
    from hpasc.runconfig.cell_level import load_cell_level_config
    from hpasc.train.cell_level import train_fold

    _crop_set(tmp_path, n_fields=16)
    over = [
        f"data.root={tmp_path}",
        "trainer.max_epochs=2",
        "data.batch_size=4",
        "predict.after_fit=false",
    ]
    cfg = load_cell_level_config(CONFIGS / "tiny.yaml", [*over, "trainer.monitor=null"])
    cfg.data.sources = [CropSourceConfig(crops="crops", labels="train.csv")]
    with pytest.raises(RuntimeError, match="killed"):
        train_fold(cfg, 0, tmp_path / "run", callbacks=[_Kill()])
    last = tmp_path / "run" / "fold-0" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 0
    with pytest.raises(OutputError, match="--resume"):
        train_fold(cfg, 0, tmp_path / "run")
    epochs = _Epochs()
    train_fold(cfg, 0, tmp_path / "run", resume=True, callbacks=[epochs])
    second = torch.load(last, weights_only=False)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"] > 0
    assert epochs.seen == [(1, 1)]  # the resumed epoch reads the fields in epoch 1's order


@pytest.mark.slow
def test_ddp_on_cpu_two_processes(tmp_path):
    """Two gloo processes: fields split between ranks, validation gathered, OOF table complete."""
    import os
    import subprocess
    import sys
    import textwrap

    _, _, cells = _crop_set(tmp_path, n_fields=16)
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from hpasc.data.crops import CropSourceConfig
            from hpasc.runconfig.cell_level import load_cell_level_config
            from hpasc.train.cell_level import train_fold

            cfg = load_cell_level_config({str(CONFIGS / "tiny.yaml")!r}, [
                "data.root={tmp_path}", "trainer.accelerator=cpu", "trainer.devices=2",
                "trainer.sync_batchnorm=false", "trainer.max_epochs=1", "data.batch_size=4",
                "predict.tta='none'"])
            cfg.data.sources = [CropSourceConfig(crops="crops", labels="train.csv")]
            train_fold(cfg, 0, {str(tmp_path / "run")!r})
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    fold = tmp_path / "run" / "fold-0"
    metrics = pd.read_csv(fold / "metrics.csv")
    assert metrics["valid/map"].notna().sum() == 1
    data = CellDataConfig(
        root=str(tmp_path), n_folds=2, sources=[CropSourceConfig(crops="crops", labels="train.csv")]
    )
    valid, train = (load_sources(data, 0, part, progress=False) for part in ("valid", "train"))
    steps = len(CropStream(train, 4, train=True, rank=0, world_size=2)) // 4
    assert metrics["step"].max() + 1 == steps  # each rank ran its half of the batches
    oof = pd.read_parquet(fold / "valid_cells.parquet")
    assert len(oof) == valid.n_cells and not oof.duplicated(["image_id", "cell_id"]).any()


# ---------------------------------------------------------------------------------- configs

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cell-level"


@pytest.mark.parametrize(
    "name, head, crops",
    [
        ("resnest50-from768-stage2", "linear", "from-768"),
        ("resnest50-from768-stage3", "linear", "from-768"),
        ("resnest50-from1536-stage3-cos", "cosine", "from-1536"),
    ],
)
def test_reference_configs_carry_the_reference_numbers(name, head, crops):
    from hpasc.runconfig.cell_level import load_cell_level_config

    cfg = load_cell_level_config(CONFIGS / f"{name}.yaml", ["data.batch_size=64"])
    assert cfg.data.batch_size == 64  # overrides apply
    cfg = load_cell_level_config(CONFIGS / f"{name}.yaml")
    assert (cfg.model.arch, cfg.model.head, cfg.model.instance_norm_input) == (
        "resnest50d",
        head,
        True,
    )
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.n_folds) == (128, 50, 5)
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.schedule) == ("Adam", 1e-3, "cos")
    assert (cfg.optim.warmup_epochs, cfg.optim.warmup_factor) == (5, 0.1)
    assert (cfg.loss.objective, cfg.loss.exclude_hardest, cfg.augment.cutmix_p) == ("bce", 0.0, 1.0)
    assert len(cfg.data.sources) == 2 and all(
        crops in s.crops and s.soft_labels for s in cfg.data.sources
    )


def test_cosine_head_and_bad_values():
    from hpasc.errors import ConfigError
    from hpasc.models.cell import build_cell_model
    from hpasc.models.heads import CosineClassifier
    from hpasc.runconfig.cell_level import load_cell_level_config

    cfg = load_cell_level_config(CONFIGS / "tiny.yaml", ["model.head=cosine"])
    model = build_cell_model(cfg.model)
    assert isinstance(model.head, CosineClassifier)
    assert model(torch.rand(2, 8, 32, 32)).shape == (2, NUM_CLASSES)
    with pytest.raises(ConfigError, match="loss.exclude_hardest"):
        load_cell_level_config(CONFIGS / "tiny.yaml", ["loss.exclude_hardest=1.5"])
    with pytest.raises(ConfigError, match="model.head"):
        load_cell_level_config(CONFIGS / "tiny.yaml", ["model.head=mlp"])
