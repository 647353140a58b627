"""Training step, prediction with TTA, resume after a killed run, DDP on CPU."""

import os
import subprocess
import sys
import textwrap

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from cam_helpers import ROOT, synth_data, tiny_config
from hpasc.cells import make_table
from hpasc.data.fields import FieldDataset, FieldTable, collate_fields, load_field_table
from hpasc.train.image_level_module import CAMConsistencyModule


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_data(tmp_path_factory.mktemp("cam-train") / "synth", n_images=8, size=160)


def _batch(cfg, pseudo=None, n=4):
    cfg.data.crop_size = 96  # small crops keep the step tests fast
    table = load_field_table(cfg.data)
    ds = FieldDataset(table, np.arange(n), cfg.data, "train", pseudo, cfg.augment.drop_cell_p)
    return collate_fields([ds[i] for i in range(n)])


def _module(cfg, logged):
    torch.manual_seed(0)
    module = CAMConsistencyModule(cfg, 0)
    module.log = lambda name, value, **kw: logged.append(
        (name, float(torch.as_tensor(value).detach()))
    )
    return module


def _steps(cfg, batch, n_steps, lr=1e-2):
    logged = []
    module = _module(cfg, logged)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    for _ in range(n_steps):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(dict(logged))
    return losses


def test_training_step_losses_fall_on_a_fixed_batch(data):
    cfg = tiny_config(data)
    logs = _steps(cfg, _batch(cfg), 8)
    for key in ("train/loss", "train/class_loss", "train/consistency_loss"):
        values = [step[key] for step in logs]
        assert np.isfinite(values).all(), key
        assert values[-1] < values[0], (key, values)


@pytest.mark.parametrize(
    "options",
    [
        ["augment.cutmix_p=1.0", "augment.cutmix_repeat=2", "loss.objective=bce"],
        [
            "augment.angle_limit=30",
            "augment.shear_limit=8",
            "augment.scale_limit=0.1",
            "augment.drop_cell_p=1.0",
        ],
        [
            "consistency.targets=positive_only",
            "consistency.hard_label_threshold=0.7",
            "model.head=cosine",
        ],
        ["consistency.criterion=l2", "consistency.alpha_ramp=0.5"],
        [
            "data.heavy_pixel_aug=[{type: GaussNoise, p: 1.0}, {type: RandomBrightnessContrast, p: 1.0}]"
        ],
    ],
)
def test_training_step_options_give_finite_losses(data, options):
    cfg = tiny_config(data, *options)
    logs = _steps(cfg, _batch(cfg), 2)
    assert all(np.isfinite(v) for step in logs for v in step.values())


def test_stage2_consistency_uses_pseudo_labels(data):
    from hpasc.data.fields import PseudoLabels

    cfg = tiny_config(data)
    table = load_field_table(cfg.data)
    probe = FieldDataset(table, np.arange(4), cfg.data, "predict")
    rows = [(table.ids[i], c) for i in range(4) for c in probe[i]["cell_ids"]]
    probs = np.zeros((len(rows), 19), np.float32)
    probs[:, 3] = 1.0  # every cell: class 3 only
    pseudo = PseudoLabels(make_table([r[0] for r in rows], [r[1] for r in rows], probs))
    cfg.data.sources[0].pseudo_labels = "pseudo.parquet"  # marks the config as stage 2
    batch = _batch(cfg, pseudo)
    module = _module(cfg, [])
    assert module.use_pseudo
    opt = torch.optim.Adam(module.parameters(), lr=2e-2)
    for _ in range(6):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        cam = module(batch["heavy"])
    from hpasc.models.cam import cell_logits

    means, counts = cell_logits(cam, batch["mask"], batch["cell_ids"].shape[1])
    present = counts > 0
    # cells are pushed towards their pseudo label: class 3 up, the others down
    assert (means[:, 3][present] > means[:, 5][present]).float().mean() > 0.9


def _write_field(images, masks, fid, image, mask):
    from hpasc.io.images import write_field, write_mask

    write_field(images, fid, np.ascontiguousarray(image))
    write_mask(masks, fid, np.ascontiguousarray(mask))


def test_d4_tta_gives_the_same_cells_for_a_flipped_or_rotated_field(data, tmp_path):
    from hpasc.io.images import read_field, read_mask
    from hpasc.io.store import Store
    from hpasc.models.cam import CAMClassifier
    from hpasc.predict.image_level import predict_dataset

    cfg = tiny_config(data)
    src_images, src_masks = Store(str(data / "images")), Store(str(data / "masks"))
    fid = load_field_table(cfg.data).ids[0]
    image, mask = (
        read_field(src_images, fid, dtype="uint8")[:, :150],
        read_mask(src_masks, fid)[:, :150],
    )
    images, masks = Store(str(tmp_path / "images")), Store(str(tmp_path / "masks"))
    _write_field(images, masks, "orig", image, mask)
    _write_field(images, masks, "flip", image[:, ::-1], mask[:, ::-1])
    _write_field(images, masks, "rot", np.rot90(image), np.rot90(mask))
    _write_field(images, masks, "empty", image, np.zeros_like(mask))
    images.close(), masks.close()
    torch.manual_seed(0)
    model = CAMClassifier(cfg.model).eval()
    table = FieldTable.unlabelled(["orig", "flip", "rot", "empty"], images, masks)
    ds = FieldDataset(table, np.arange(4), cfg.data, "predict")
    cells, image_table = predict_dataset([model], ds, tta="d4", batch_size=3, progress=False)
    # a field without cells: no cell rows, but an image-level row
    assert "empty" not in set(cells["image_id"]) and image_table["image_id"].tolist()[-1] == "empty"
    by_field = {
        k: g.set_index("cell_id").drop(columns="image_id").sort_index()
        for k, g in cells.groupby("image_id")
    }
    assert len(by_field["orig"]) == len(np.unique(mask)) - 1
    for other in ("flip", "rot"):
        pd.testing.assert_frame_equal(by_field[other], by_field["orig"], atol=1e-5, rtol=1e-4)
    probs = image_table.set_index("image_id")
    np.testing.assert_allclose(probs.loc["flip"], probs.loc["orig"], atol=1e-5)
    plain, _ = predict_dataset([model], ds, tta=None, batch_size=3, progress=False)
    assert not np.allclose(plain.iloc[:, 2:].to_numpy(), cells.iloc[:, 2:].to_numpy(), atol=1e-4)


class _Kill(L.Callback):
    """Dies as epoch 1 starts, after epoch 0's checkpoint was written."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("killed in epoch 1")


def test_resume_continues_from_last_checkpoint(data, tmp_path):
    from hpasc.errors import OutputError
    from hpasc.train.image_level import train_fold

    cfg = tiny_config(
        data, "trainer.max_epochs=2", "predict.after_fit=false", "trainer.monitor=null"
    )
    with pytest.raises(RuntimeError, match="killed"):
        train_fold(cfg, 0, tmp_path, callbacks=[_Kill()])
    last = tmp_path / "fold-0" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 0
    with pytest.raises(OutputError, match="--resume"):
        train_fold(cfg, 0, tmp_path)
    train_fold(cfg, 0, tmp_path, resume=True)
    second = torch.load(last, weights_only=False)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"] > 0
    logs = pd.read_csv(tmp_path / "fold-0" / "metrics.csv")
    assert sorted(logs["epoch"].dropna().unique().tolist()) == [0, 1]


@pytest.mark.slow
def test_ddp_on_cpu_two_processes(data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT / "tests")!r})
            from cam_helpers import tiny_config
            from hpasc.train.image_level import train_fold

            cfg = tiny_config({str(data)!r}, "trainer.accelerator=cpu", "trainer.devices=2",
                              "trainer.max_epochs=1", "predict.after_fit=true")
            train_fold(cfg, 0, {str(tmp_path / "run")!r})
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stderr + proc.stdout
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    from hpasc.predict.image_level import load_fold

    model, cfg = load_fold(tmp_path / "run" / "fold-0")
    assert cfg.trainer.devices == "2"
    assert (tmp_path / "run" / "fold-0" / "valid_cells.parquet").is_file()
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 4, 64, 64))).all()


def test_init_from_loads_the_same_folds_checkpoint(data, tmp_path):
    import dataclasses

    from hpasc.errors import InputError
    from hpasc.models.cam import CAMClassifier, build_cam_model

    cfg = tiny_config(data)
    source = CAMClassifier(cfg.model)
    (tmp_path / "fold-1").mkdir()
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "fold-1" / "last.ckpt")
    init = dataclasses.replace(cfg.model, init_from=str(tmp_path / "fold-{fold}" / "last.ckpt"))
    loaded = build_cam_model(init, fold=1)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.save(source.state_dict(), tmp_path / "plain.pt")  # a bare state_dict works too
    plain = build_cam_model(dataclasses.replace(cfg.model, init_from=str(tmp_path / "plain.pt")))
    assert torch.equal(plain.head.weight, source.head.weight)
    with pytest.raises(InputError, match="weight file not found"):
        build_cam_model(init, fold=0)
    wrong = dataclasses.replace(init, head="cosine")
    with pytest.raises(InputError, match="does not fit"):
        build_cam_model(wrong, fold=1)


def test_same_seed_same_predictions(data, tmp_path):
    from hpasc.train.image_level import train_fold

    opts = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "predict.tta=none"]
    tables = []
    for name in ("a", "b"):
        out = train_fold(tiny_config(data, *opts, "augment.drop_cell_p=0.5"), 1, tmp_path / name)
        tables.append(pd.read_parquet(out / "valid_cells.parquet"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    other = train_fold(tiny_config(data, *opts, "trainer.seed=1"), 1, tmp_path / "c")
    assert not tables[0].equals(pd.read_parquet(other / "valid_cells.parquet"))
