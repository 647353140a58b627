"""Fields with zero cells pass through every stage, as in the original (issue 11, item 1.4).

The original keeps such fields: their pseudo labels stay zero, they get no crops, no cell
predictions and an empty submission row. The last test runs a shrunken copy of the reference
recipe (configs/recipes/pfcell-2021.yaml, same steps and wiring; tiny models, tiny synthetic
fields, 2 folds) with one field of each set (train, public HPA, test) without cells.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hpasc.io.images import read_mask, write_mask
from hpasc.io.store import Store

ROOT = Path(__file__).resolve().parents[1]
PFCELL = ROOT / "configs" / "recipes" / "pfcell-2021.yaml"


def _zero_mask(masks: Path, field_id: str) -> None:
    store = Store(masks)
    write_mask(store, field_id, np.zeros_like(read_mask(store, field_id)))


def _first_id(folder: Path) -> str:
    return sorted(p.name.removesuffix(".png") for p in folder.glob("*.png"))[0]


# ------------------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def synth_zero(tmp_path_factory):
    """8 synthetic fields, the first with its mask zeroed."""
    from hpasc.synth import synthesize

    data = tmp_path_factory.mktemp("zero") / "synth"
    synthesize(data, n_images=8, size=128, seed=5, progress=False)
    empty = _first_id(data / "masks")
    _zero_mask(data / "masks", empty)
    return data, empty


def test_training_dataset_keeps_a_field_without_cells_and_without_pseudo_labels(synth_zero):
    """Stage 2/3 CAM training: the pseudo-label table has no rows for a zero-cell field (it
    has no cells); the field still trains on its image label, with no consistency targets."""
    from hpasc.cells import make_table
    from hpasc.data.fields import FieldDataset, PseudoLabels, collate_fields, load_field_table
    from hpasc.runconfig.image_level import load_image_level_config

    data, empty = synth_zero
    cfg = load_image_level_config(ROOT / "configs/image-level/tiny.yaml", [f"data.root={data}"])
    table = load_field_table(cfg.data)
    rows = np.arange(len(table))
    cells = pd.read_csv(data / "cells.csv")
    cells = cells[cells.image_id != empty]
    probs = np.full((len(cells), 19), 0.25, np.float32)
    pseudo = PseudoLabels(make_table(cells.image_id.to_numpy(), cells.cell_id.to_numpy(), probs))
    ds = FieldDataset(table, rows, cfg.data, mode="train", pseudo=pseudo)
    i = table.ids.index(empty)
    item = ds[i]
    assert len(item["cell_ids"]) == 0 and item["cell_targets"].shape == (0, 19)
    assert not item["mask"].any()
    batch = collate_fields([item, ds[(i + 1) % len(ds)]])
    assert batch["cell_targets"].shape[0] == 2
    # a field WITH cells but no pseudo labels is still an error naming it
    from hpasc.errors import InputError

    other = table.ids[(i + 1) % len(ds)]
    keep = (cells.image_id != other).to_numpy()
    bad = PseudoLabels(
        make_table(cells.image_id[keep].to_numpy(), cells.cell_id[keep].to_numpy(), probs[keep])
    )
    with pytest.raises(InputError, match=other):
        FieldDataset(table, rows, cfg.data, mode="train", pseudo=bad)[table.ids.index(other)]


def test_image_level_prediction_of_a_field_without_cells(synth_zero):
    """OOF and test prediction: the field gets image-level probabilities and no cell rows."""
    import torch

    from hpasc.data.fields import FieldDataset, FieldTable
    from hpasc.models.cam import CAMClassifier
    from hpasc.predict.image_level import predict_dataset
    from hpasc.runconfig.image_level import load_image_level_config

    data, empty = synth_zero
    cfg = load_image_level_config(ROOT / "configs/image-level/tiny.yaml", [f"data.root={data}"])
    torch.manual_seed(0)
    model = CAMClassifier(cfg.model).eval()
    ids = [empty, sorted(p.name[:-4] for p in (data / "masks").glob("*.png"))[1]]
    table = FieldTable.unlabelled(ids, Store(data / "images"), Store(data / "masks"))
    ds = FieldDataset(table, np.arange(2), cfg.data, mode="predict")
    for upsample in ("nearest", "bilinear"):
        cells, images = predict_dataset([model], ds, "none", upsample, 2, progress=False)
        assert list(images.image_id) == ids and images.notna().all().all()
        assert empty not in set(cells.image_id) and len(cells) > 0


def test_crops_of_a_field_without_cells_are_an_empty_record(synth_zero, tmp_path):
    from hpasc.prepare import crop_set, read_crop_cell_table, read_crops

    data, empty = synth_zero
    crop_set(data / "images", data / "masks", tmp_path, size=32, progress=False)
    crops, ids = read_crops(str(tmp_path), empty)
    assert crops.shape == (0, 8, 32, 32) and len(ids) == 0
    table = read_crop_cell_table(str(tmp_path))
    assert empty not in set(table.image_id) and table.image_id.nunique() == 7


def test_submission_row_of_a_field_without_cells_is_empty(synth_zero, tmp_path):
    from hpasc.cells import make_table
    from hpasc.submission import write_submission

    data, empty = synth_zero
    cells = pd.read_csv(data / "cells.csv")
    cells = cells[cells.image_id != empty]
    table = make_table(
        cells.image_id.to_numpy(), cells.cell_id.to_numpy(), np.full((len(cells), 19), 0.5)
    )
    path = tmp_path / "cells.parquet"
    table.to_parquet(path, index=False)
    write_submission(data / "masks", [path], tmp_path / "submission.csv")
    sub = pd.read_csv(tmp_path / "submission.csv", keep_default_na=False)
    assert len(sub) == 8
    row = sub[sub["ID"] == empty].iloc[0]
    assert row.PredictionString == "" and (row.ImageWidth, row.ImageHeight) == (128, 128)
    assert (sub[sub["ID"] != empty].PredictionString.str.len() > 0).all()


# ------------------------------------------------------------------------- the whole recipe


def _public_table(train_csv: Path, out: Path) -> None:
    """A public-HPA table (kaggle_2021.tsv form) for synthetic fields."""
    labels = pd.read_csv(train_csv)
    pd.DataFrame(
        {
            "Image": "https://images.example/1/" + labels.ID,
            "Label_idx": labels.Label,
            "in_trainset": False,
            "Cellline": "A-431",
        }
    ).to_csv(out, index=False)


def _data_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """--data of the shrunken recipe: Kaggle-like train/test, public HPA at both sizes, masks
    in place of the segmentation networks' (one field of each set without cells)."""
    from hpasc.prepare import resize_set
    from hpasc.synth import synthesize

    data, work = root / "data", root / "synth"
    empty = {}
    for name, n, size, seed in (
        ("train", 8, 128, 11),
        ("public", 6, 128, 12),
        ("test", 3, 160, 13),
    ):
        synthesize(work / name, n_images=n, size=size, seed=seed, progress=False)
        empty[name] = _first_id(work / name / "masks")
        _zero_mask(work / name / "masks", empty[name])
    data.mkdir()
    (work / "train" / "images").rename(data / "train")
    (work / "test" / "images").rename(data / "test")
    (work / "public" / "images").rename(data / "public-hpa-1536")
    resize_set(
        data / "public-hpa-1536", data / "public-hpa-768", size=64, dtype="uint8", progress=False
    )
    for name in empty:
        (work / name / "masks").rename(data / f"masks-{name}")
    (work / "train" / "train.csv").rename(data / "train.csv")
    _public_table(work / "public" / "train.csv", data / "kaggle_2021.tsv")
    return data, empty


CAM_TINY = [
    "model.arch=test_efficientnet", "model.pretrained=false", "data.n_folds=2",
    "data.batch_size=4", "data.crop_size=48", "data.valid_crop_size=null", "data.num_workers=0",
    "trainer.max_epochs=1", "trainer.loggers=[csv]", "trainer.progress_bar=false",
    "predict.batch_size=4", "predict.tta=none",
]  # fmt: skip
CELL_TINY = [
    "model.arch=test_resnet", "model.pretrained=false", "data.n_folds=2", "data.batch_size=8",
    "data.num_workers=0", "data.shuffle_buffer=64", "trainer.max_epochs=1",
    "trainer.loggers=[csv]", "trainer.progress_bar=false", "predict.batch_size=32",
    "predict.tta=none",
]  # fmt: skip
SIZES = {768: 64, 1536: 128}


def shrunken_reference(tmp_path: Path) -> Path:
    """pfcell-2021.yaml with its steps and wiring, sized down; segmentation steps read the
    prepared masks instead of running the HPA networks (no weights here)."""
    recipe = yaml.safe_load(PFCELL.read_text())
    steps = []
    for step in recipe["steps"]:
        kind = step["kind"]
        if kind == "folds":
            step["n_folds"] = 2
        elif kind == "segment":
            source = {"masks-train-1536": "train", "masks-public-1536": "public"}.get(
                step["name"], "test"
            )
            size = 128 if source != "test" else 160
            step = {"name": step["name"], "kind": "resize", "input": f"${{data}}/masks-{source}",
                    "size": size, "masks": True}  # fmt: skip
        elif kind == "resize":
            step["size"] = SIZES[step["size"]]
            step["workers"] = 1
        elif kind == "crop":
            step["size"], step["workers"] = 32, 1
        elif kind == "train-image-level":
            step["overrides"] = list(step["overrides"]) + CAM_TINY
        elif kind == "train-cell-level":
            step["overrides"] = list(step["overrides"]) + CELL_TINY
        elif kind.startswith("predict-"):
            step["tta"] = "none"
        if kind == "submit":
            step["scale_thresholds_with_size"] = True
        steps.append(step)
    recipe["steps"] = steps
    path = tmp_path / "pfcell-small.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_zero_cell_fields_pass_through_the_shrunken_reference_recipe(tmp_path, cli):
    data, empty = _data_folder(tmp_path)
    recipe = shrunken_reference(tmp_path)
    work = tmp_path / "work"
    r = cli("run", recipe, "--data", data, "--work", work, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]

    # pseudo labels of both averages: every field with cells, none for the empty ones; the
    # image-level tables list every field (the empty ones too)
    for avg in ("stage1-average", "stage2-average"):
        cells = pd.read_parquet(work / avg / "cells.parquet")
        assert not cells.image_id.isin([empty["train"], empty["public"]]).any()
        assert cells.image_id.nunique() == 8 + 6 - 2
    images = pd.read_parquet(work / "oof-cam-b2-768" / "images.parquet")
    assert {empty["train"], empty["public"]} <= set(images.image_id)
    # crops: an empty record, no rows in the cell table
    crops = pd.read_parquet(work / "crops-train-768" / "cells.parquet")
    assert empty["train"] not in set(crops.image_id) and crops.image_id.nunique() == 7
    cell_oof = pd.read_parquet(work / "oof-cell-resnest50-768-stage2" / "cells.parquet")
    assert cell_oof.image_id.nunique() == 12 and empty["train"] not in set(cell_oof.image_id)
    # test predictions, ensemble and submission
    for step in ("test-cam-b2-stage3", "test-cell-resnest50-768-stage3"):
        assert empty["test"] in set(pd.read_parquet(work / step / "images.parquet").image_id)
        assert empty["test"] not in set(pd.read_parquet(work / step / "cells.parquet").image_id)
    ensemble = pd.read_parquet(work / "ensemble" / "cells.parquet")
    assert empty["test"] not in set(ensemble.image_id) and ensemble.image_id.nunique() == 2
    sub = pd.read_csv(work / "submission" / "submission.csv", keep_default_na=False)
    assert len(sub) == 3 and sub.set_index("ID").loc[empty["test"], "PredictionString"] == ""
    assert (sub[sub["ID"] != empty["test"]].PredictionString.str.len() > 0).all()
    done = json.loads((work / "submission" / ".hpasc-done.json").read_text())
    assert done["fingerprint"]


def test_pseudo_labels_beside_an_image_table_know_the_zero_cell_fields(tmp_path):
    """An out-of-fold table's images.parquet lists every predicted field: a zero-cell field is
    known, a field that was never predicted is an error when the dataset is built."""
    from hpasc.cells import make_table
    from hpasc.data.fields import PseudoLabels

    make_table(["a", "a"], np.array([1, 2]), np.zeros((2, 19))).to_parquet(
        tmp_path / "cells.parquet", index=False
    )
    pd.DataFrame({"image_id": ["a", "empty"]}).to_parquet(tmp_path / "images.parquet")
    pseudo = PseudoLabels.read(str(tmp_path / "cells.parquet"))
    assert "empty" in pseudo and "a" in pseudo and "never" not in pseudo
    assert pseudo.targets("empty", np.zeros(0, np.int64)).shape == (0, 19)
