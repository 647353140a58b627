"""The recipes shipped in configs/recipes: the reference run (pfcell-2021) and the demo.

The reference run cannot execute here (Kaggle data, GPUs); these tests check its plan: every
step of method spec §13 in a valid order, 50 trainings, every config loadable with the
recipe's resolved overrides and every data path pointing at what the recipe itself prepares.
"""

import re
from pathlib import Path

import pytest

from hpasc.pipeline.recipe import TaskContext, load_recipe, resolve, run_recipe
from hpasc.pipeline.steps import find_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
PFCELL = RECIPES / "pfcell-2021.yaml"
LOADERS = {
    "train-image-level": "hpasc.runconfig.image_level:load_image_level_config",
    "train-cell-level": "hpasc.runconfig.cell_level:load_cell_level_config",
}
STAGE1 = ["cam-b2-768", "cam-b5-768", "cam-b7-768", "cam-b2-1536"]
STAGE2 = ["cam-b2-stage2", "cell-resnest50-768-stage2"]
STAGE3 = [
    "cam-b2-stage3",
    "cam-b2-stage3-cos",
    "cell-resnest50-768-stage3",
    "cell-resnest50-1536-stage3-cos",
]
TEST_PREDICTIONS = [f"test-{m}" for m in STAGE3]


@pytest.fixture(scope="module")
def pfcell(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pfcell")
    return load_recipe(PFCELL, data=tmp / "data", work=tmp / "work")


def _dry_run_tasks(cli, recipe: Path, data: Path, work: Path, *extra: str):
    proc = cli("run", recipe, "--data", data, "--work", work, "--dry-run", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = []
    for line in proc.stdout.splitlines()[1:]:
        if line.startswith(" " * 7):  # the settings of the task above
            continue
        m = re.fullmatch(r"\s*\d+\. \[(\w+)\s*\] (\S+)  \(([\w-]+)\)(?:  <- (.*))?", line)
        assert m, f"unexpected plan line: {line!r}"
        assert m[1] == "run"
        tasks.append((m[2], m[3], m[4].split(", ") if m[4] else []))
    return tasks


def test_pfcell_dry_run_plan(cli, tmp_path):
    tasks = _dry_run_tasks(cli, PFCELL, tmp_path / "data", tmp_path / "work")
    kinds = [kind for _, kind, _ in tasks]
    assert kinds.count("train-image-level") + kinds.count("train-cell-level") == 50
    assert kinds.count("train-image-level") == 7 * 5 and kinds.count("train-cell-level") == 3 * 5
    labels = [label for label, _, _ in tasks]
    for model in STAGE1 + STAGE2 + STAGE3:
        assert [x for x in labels if x.startswith(model + "/")] == [
            f"{model}/fold-{k}" for k in range(5)
        ]
    # valid order: everything a task needs (all folds of it) comes earlier
    seen: set[str] = set()
    for label, _, needs in tasks:
        for need in needs:
            assert need in seen, f"{label} needs {need}, which comes later"
        seen.add(label.split("/")[0])
    # the two out-of-fold averages, then the ensemble of the four stage-3 test predictions, then
    # the submission, in this order
    pos = {label: i for i, label in enumerate(labels)}
    by_name = {label: needs for label, _, needs in tasks}
    assert by_name["stage1-average"] == [f"oof-{m}" for m in STAGE1]
    assert by_name["stage2-average"] == [f"oof-{m}" for m in STAGE2]
    assert by_name["ensemble"] == TEST_PREDICTIONS
    assert kinds.count("average") == 3 and kinds.count("oof") == 6
    assert max(pos[f"{m}/fold-4"] for m in STAGE1) < pos["stage1-average"]
    assert pos["stage1-average"] < min(pos[f"{m}/fold-0"] for m in STAGE2)
    assert max(pos[f"{m}/fold-4"] for m in STAGE2) < pos["stage2-average"]
    assert pos["stage2-average"] < min(pos[f"{m}/fold-0"] for m in STAGE3)
    assert labels[-2:] == ["ensemble", "submission"]
    assert len(tasks) == 83
    assert set(by_name["submission"]) == {"masks-test", "ensemble"}
    # a single fold of a training step (one SLURM array job)
    proc = cli(
        "run", PFCELL, "--data", tmp_path, "--work", tmp_path / "w", "--dry-run",
        "--only", "cam-b7-768", "--fold", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        "  1. [run   ] cam-b7-768/fold-3  (train-image-level)  <- train-768, masks-train-768, "
        "folds, masks-public-768",
        "       trainer.precision=32-true, predict.upsample=nearest, predict.precision=32-true",
    ]


def test_pfcell_until_prepared_is_the_whole_preparation(cli, tmp_path):
    tasks = _dry_run_tasks(cli, PFCELL, tmp_path, tmp_path / "work", "--until", "prepared")
    kinds = {kind for _, kind, _ in tasks}
    assert kinds == {"folds", "resize", "segment", "crop", "group"}
    assert len(tasks) == 19 and tasks[-1][0] == "prepared"
    crops = [label for label, kind, _ in tasks if kind == "crop"]
    assert len(crops) == 6 and set(tasks[-1][2]) == {"folds", *crops}


def test_group_step_does_nothing_and_takes_no_keys(tmp_path):
    from hpasc.pipeline.recipe import StepFailed

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {name: a, kind: group}\n  - {name: b, kind: group, needs: [a]}\n"
    )
    r = load_recipe(recipe, data=tmp_path, work=tmp_path / "work")
    assert [it.task.label for it in run_recipe(r, until="b", echo=lambda s: None)] == ["a", "b"]
    assert (tmp_path / "work" / "b" / ".hpasc-done.json").is_file()
    recipe.write_text("steps:\n  - {name: a, kind: group, size: 3}\n")
    with pytest.raises(StepFailed, match="unknown key 'size'"):
        run_recipe(load_recipe(recipe, data=tmp_path, work=tmp_path / "w2"), echo=lambda s: None)


def _resolved(recipe, step, fold=None):
    out = recipe.out_dir(step.name, fold)
    return resolve(step.params, recipe, out, fold)


def _context(recipe, step, fold=None) -> TaskContext:
    out = recipe.out_dir(step.name, fold)
    return TaskContext(step.name, out, fold, recipe.data, recipe.work, recipe.path.parent, 5, out)


def test_pfcell_configs_load_with_the_recipes_paths(pfcell):
    import importlib

    work, data = str(pfcell.work), str(pfcell.data)
    trainings = [s for s in pfcell.steps if s.kind in LOADERS]
    assert [s.name for s in trainings] == STAGE1 + STAGE2 + STAGE3
    for step in trainings:
        assert step.folds == [0, 1, 2, 3, 4]
        for fold in (0, 3):
            params = _resolved(pfcell, step, fold)
            module, fn = LOADERS[step.kind].split(":")
            cfg = getattr(importlib.import_module(module), fn)(
                find_config(params["config"], _context(pfcell, step, fold)), params["overrides"]
            )
            assert cfg.data.n_folds == 5 and cfg.data.fold_seed == 0
            assert cfg.data.root == data
            assert [s.name for s in cfg.data.sources] == ["kaggle", "public-hpa"]
            kaggle, public = cfg.data.sources
            assert kaggle.labels == f"{data}/train.csv"
            assert public.labels == f"{data}/kaggle_2021.tsv"
            for src in cfg.data.sources:
                assert src.folds == f"{work}/folds/folds.csv"
                paths = [src.crops] if step.kind == "train-cell-level" else [src.images, src.masks]
                # every input is what the recipe prepares (or the imported public-HPA fields)
                for p in paths:
                    assert p.startswith(work + "/") or p in (
                        f"{data}/public-hpa-{n}" for n in (768, 1536)
                    ), p
                targets = src.soft_labels if step.kind == "train-cell-level" else src.pseudo_labels
                if step.name in STAGE1:
                    assert targets is None
                else:
                    avg = "stage1-average" if step.name in STAGE2 else "stage2-average"
                    assert targets == f"{work}/{avg}/cells.parquet"
            if step.name == "cam-b2-1536":
                assert cfg.model.init_from == f"{work}/cam-b2-768/fold-{fold}/checkpoints/last.ckpt"
                assert kaggle.images == f"{work}/train-1536"
                assert kaggle.masks == f"{work}/masks-train-1536"
            elif step.kind == "train-image-level":
                assert (kaggle.images, kaggle.masks) == (
                    f"{work}/train-768",
                    f"{work}/masks-train-768",
                )
                assert (public.images, public.masks) == (
                    f"{data}/public-hpa-768",  # imported from the originals, as 1536 (spec §2.1)
                    f"{work}/masks-public-768",
                )
            else:
                res = "1536" if "1536" in step.name else "768"
                assert kaggle.crops == f"{work}/crops-train-{res}"
                assert public.crops == f"{work}/crops-public-{res}"


def test_pfcell_preparation_and_ensemble_parameters(pfcell):
    data = str(pfcell.data)
    p = {s.name: _resolved(pfcell, s) for s in pfcell.steps if s.folds is None}
    for name in ("masks-train-1536", "masks-public-1536", "masks-test"):
        assert p[name]["method"] == "hpa-unet"
        assert p[name]["method_options"]["nuclei_model"] == f"{data}/weights/dpn_unet_nuclei_v1.pth"
        assert p[name]["method_options"]["cell_model"] == f"{data}/weights/dpn_unet_cell_3ch_v1.pth"
    # training masks: 1536-px fields, nets at 512 px, label_cell at scale 1.0; test masks: the
    # original fields at scale 0.5 (spec §3, "resolutions actually used"); every field goes to
    # the nets at exactly 512 px (create_cell_mask's pipeline, preset pfcell-2021)
    for name in ("masks-train-1536", "masks-public-1536", "masks-test"):
        assert p[name]["preset"] == "pfcell-2021"
        assert "scale_factor" not in p[name]["method_options"]
    assert p["masks-train-1536"]["method_options"]["label_scale"] == 1.0
    assert p["masks-test"]["images"] == f"{data}/test"
    assert p["masks-test"]["method_options"]["label_scale"] == 0.5
    for name, size in [
        ("masks-train-768", 768),
        ("masks-test-1536", 1536),
        ("masks-test-768", 768),
    ]:
        assert p[name]["masks"] is True and p[name]["size"] == size
    crops = [s for s in pfcell.steps if s.kind == "crop"]
    assert len(crops) == 6 and {p[s.name]["size"] for s in crops} == {192}
    for s in crops:  # images and masks of the same resolution
        res = s.name.rsplit("-", 1)[1]
        assert res in p[s.name]["masks"] and res in p[s.name]["images"]
    for name in TEST_PREDICTIONS:
        assert p[name]["tta"] == "d4"
        assert p[name]["runs"] == str(pfcell.work / name.removeprefix("test-"))
    sub = p["submission"]
    assert (sub["edge_area_threshold"], sub["center_area_threshold"]) == (80000, 32000)
    assert sub["masks"] == str(pfcell.work / "masks-test")  # original-size test masks
    assert sub["predictions"] == str(pfcell.work / "ensemble")
    assert p["ensemble"]["tables"] == [str(pfcell.work / n) for n in TEST_PREDICTIONS]


def test_pfcell_folds_step_splits_each_table(tmp_path):
    """The first step on tiny label tables: one fold table covering both sources, 5 folds each."""
    import pandas as pd

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(
        "ID,Label\n" + "".join(f"k{i:02d},{i % 4}|{(i + 1) % 19}\n" for i in range(25))
    )
    (data / "kaggle_2021.tsv").write_text(
        "Image,Label_idx,in_trainset,Cellline\n"
        + "".join(f"https://x/1/p{i:02d},{i % 5},False,A-431\n" for i in range(20))
    )
    recipe = load_recipe(PFCELL, data=data, work=tmp_path / "work")
    run_recipe(recipe, until="folds", echo=lambda s: None)
    folds = pd.read_csv(tmp_path / "work" / "folds" / "folds.csv")
    assert len(folds) == 45 and sorted(set(folds["fold"])) == [0, 1, 2, 3, 4]
    kaggle = folds[folds["ID"].str.startswith("k")]
    public = folds[folds["ID"].str.startswith("p")]
    assert len(kaggle) == 25 and len(public) == 20
    assert kaggle["fold"].value_counts().min() >= 4 and public["fold"].value_counts().min() >= 3


def test_demo_recipe_loads_and_dry_runs(cli, tmp_path):
    recipe = load_recipe(RECIPES / "demo.yaml", data=tmp_path, work=tmp_path / "work")
    assert recipe.steps[-1].kind == "report"
    tasks = _dry_run_tasks(cli, RECIPES / "demo.yaml", tmp_path, tmp_path / "work")
    kinds = [kind for _, kind, _ in tasks]
    assert kinds.count("train-image-level") == 2 and kinds.count("train-cell-level") == 2
    assert kinds[-2:] == ["evaluate", "report"]
