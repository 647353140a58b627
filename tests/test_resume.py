"""Kill and resume: outputs remember how they were made, and a resumed run equals one never
stopped (segment, crop, resize, zip outputs, training)."""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from hpasc.errors import OutputError
from hpasc.io.cropset import EXT as CROPS
from hpasc.io.store import MANIFEST_NAME, Store
from hpasc.prepare import crop_set, list_crop_ids, read_crops, resize_set
from hpasc.runner import KILL_AFTER_ENV, ZIP_COMMIT_ENV
from hpasc.segment.sets import segment_set

ROOT = Path(__file__).resolve().parents[1]
N_FIELDS = 6


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from hpasc.synth import synthesize

    path = tmp_path_factory.mktemp("resume") / "synth"
    synthesize(path, n_images=N_FIELDS, size=128, seed=0, progress=False)
    return path


def hpasc(*args, env: dict | None = None):
    """The CLI in a fresh process (optionally with the kill hook or zip commit interval)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpasc.cli", *map(str, args)],
        capture_output=True, text=True, env=full, timeout=300,
    )  # fmt: skip


def killed(*args, after: int = 2, env: dict | None = None):
    """Run the CLI and let it SIGKILL itself after ``after`` finished fields."""
    r = hpasc(*args, env={KILL_AFTER_ENV: str(after), **(env or {})})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    return r


def one_error_line(r, *words: str) -> str:
    """The CLI failed with exit 2 and one ``error:`` line (no traceback) holding ``words``."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, str]:
    """Hashes of the items of a folder or zip store (bookkeeping files left out)."""
    store = Store(path)
    names = [n for n in store.list(recursive=True) if n != "errors.csv"]
    return {n: hashlib.sha256(store.read_bytes(n)).hexdigest() for n in names}


def crop_sizes(path: Path) -> set[int]:
    store = Store(path)
    return {read_crops(store, i)[0].shape[-1] for i in list_crop_ids(store)}


# --------------------------------------------------------------------------- other parameters


def test_crop_with_another_size_refuses_and_keeps_the_old_crops(synth, tmp_path):
    out = tmp_path / "crops"
    assert hpasc("crop", synth / "images", synth / "masks", out, "--size", "64").returncode == 0
    before = tree(out)
    r = hpasc("crop", synth / "images", synth / "masks", out, "--size", "32")
    one_error_line(r, str(out), "made with --size 64", "--size 32", "--overwrite")
    assert tree(out) == before and crop_sizes(out) == {64}


def test_crop_overwrite_with_another_size_equals_a_fresh_run(synth, tmp_path):
    crop_set(synth / "images", synth / "masks", tmp_path / "crops", size=64, progress=False)
    crops = tmp_path / "crops"
    crop_set(synth / "images", synth / "masks", crops, size=32, overwrite=True, progress=False)
    crop_set(synth / "images", synth / "masks", tmp_path / "fresh", size=32, progress=False)
    assert tree(tmp_path / "crops") == tree(tmp_path / "fresh")
    assert crop_sizes(tmp_path / "crops") == {32}


def test_resize_128_then_200_refuses_then_overwrite_gives_200(synth, tmp_path):
    out = tmp_path / "resized"
    assert hpasc("resize", synth / "images", out, "--size", "128").returncode == 0
    r = hpasc("resize", synth / "images", out, "--size", "200")
    one_error_line(r, "made with --size 128 (this run: --size 200)", "--overwrite or another OUT")
    assert hpasc("resize", synth / "images", out, "--size", "200", "--overwrite").returncode == 0
    from hpasc.io.images import list_field_ids, read_field

    assert {read_field(Store(out), i).shape[:2] for i in list_field_ids(Store(out))} == {(200, 200)}


@pytest.mark.parametrize(
    "first, second, word",
    [
        ({"interpolation": "area"}, {"interpolation": "cubic"}, "--interpolation area"),
        ({}, {"dtype": "uint8"}, "--dtype none"),
    ],
)
def test_resize_with_other_options_refuses(synth, tmp_path, first, second, word):
    resize_set(synth / "images", tmp_path / "r", size=64, progress=False, **first)
    with pytest.raises(OutputError, match=word):
        resize_set(synth / "images", tmp_path / "r", size=64, progress=False, **second)


def test_resize_masks_into_an_image_set_refuses(synth, tmp_path):
    resize_set(synth / "images", tmp_path / "r", size=64, progress=False)
    with pytest.raises(
        OutputError, match="made by `hpasc resize images`, not `hpasc resize masks`"
    ):
        resize_set(synth / "masks", tmp_path / "r", size=64, masks=True, progress=False)


def test_segment_with_other_options_refuses(synth, tmp_path):
    segment_set(synth / "images", tmp_path / "m", progress=False)
    with pytest.raises(OutputError, match="made with --options"):
        segment_set(
            synth / "images", tmp_path / "m", method_options={"working_size": 64}, progress=False
        )


def test_same_parameters_resume_and_skip_every_field(synth, tmp_path):
    out = tmp_path / "crops"
    assert hpasc("crop", synth / "images", synth / "masks", out, "--size", "32").returncode == 0
    r = hpasc("crop", synth / "images", synth / "masks", out, "--size", "32")
    assert r.returncode == 0 and f"{N_FIELDS} skipped" in r.stdout + r.stderr


def test_changed_inputs_refuse(synth, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(synth / "images", images)
    crop_set(images, synth / "masks", tmp_path / "crops", size=32, progress=False)
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # another size: another image
    with pytest.raises(OutputError, match=r"from other input files: images \("):
        crop_set(images, synth / "masks", tmp_path / "crops", size=32, progress=False)


def test_items_without_a_manifest_refuse(synth, tmp_path):
    crop_set(synth / "images", synth / "masks", tmp_path / "crops", size=32, progress=False)
    (tmp_path / "crops" / MANIFEST_NAME).unlink()  # e.g. made by an older hpasc
    with pytest.raises(OutputError, match="no record of how they were made"):
        crop_set(synth / "images", synth / "masks", tmp_path / "crops", size=32, progress=False)
    crops = tmp_path / "crops"
    crop_set(synth / "images", synth / "masks", crops, size=32, overwrite=True, progress=False)
    assert (tmp_path / "crops" / MANIFEST_NAME).is_file()


def test_shards_share_one_output_and_a_shard_with_other_parameters_refuses(synth, tmp_path):
    for k in range(2):
        crop_set(
            synth / "images",
            synth / "masks",
            tmp_path / "s",
            size=32,
            shard=f"{k}/2",
            progress=False,
        )
    crop_set(synth / "images", synth / "masks", tmp_path / "whole", size=32, progress=False)
    records = {k: v for k, v in tree(tmp_path / "s").items() if k.endswith(CROPS)}
    assert records and records == {
        k: v for k, v in tree(tmp_path / "whole").items() if k.endswith(CROPS)
    }
    with pytest.raises(OutputError, match="made with --size 32"):
        crop_set(
            synth / "images", synth / "masks", tmp_path / "s", size=48, shard="0/2", progress=False
        )


# --------------------------------------------------------------------------- killed runs


def test_killed_crop_resumed_with_new_parameters_refuses(synth, tmp_path):
    out = tmp_path / "crops"
    killed("crop", synth / "images", synth / "masks", out, "--size", "64")
    assert len(list(out.glob(f"*{CROPS}"))) == 2
    r = hpasc("crop", synth / "images", synth / "masks", out, "--size", "32")
    one_error_line(r, "made with --size 64 (this run: --size 32)")
    assert crop_sizes(out) == {64}  # nothing mixed


@pytest.mark.parametrize("output", ["crops", "crops.zip"])
def test_killed_crop_resumes_to_the_uninterrupted_result(synth, tmp_path, output):
    out, env = tmp_path / output, {ZIP_COMMIT_ENV: "0"}  # zip: commit after every field
    killed("crop", synth / "images", synth / "masks", out, "--size", "32", env=env)
    r = hpasc("crop", synth / "images", synth / "masks", out, "--size", "32")
    assert r.returncode == 0 and "2 skipped" in r.stdout + r.stderr, r.stdout + r.stderr
    hpasc("crop", synth / "images", synth / "masks", tmp_path / output.replace("crops", "clean"),
          "--size", "32")  # fmt: skip
    assert tree(out) == tree(tmp_path / output.replace("crops", "clean"))
    assert not [p for p in tmp_path.iterdir() if ".hpasc-tmp-" in p.name]


def test_killed_overwrite_with_new_parameters_resumes_without_old_items(synth, tmp_path):
    out = tmp_path / "crops"
    crop_set(synth / "images", synth / "masks", out, size=64, progress=False)
    killed("crop", synth / "images", synth / "masks", out, "--size", "32", "--overwrite")
    assert crop_sizes(out) == {32}  # the 64-px records were removed before the redo
    assert hpasc("crop", synth / "images", synth / "masks", out, "--size", "32").returncode == 0
    crop_set(synth / "images", synth / "masks", tmp_path / "clean", size=32, progress=False)
    assert tree(out) == tree(tmp_path / "clean")


@pytest.mark.parametrize("output", ["masks", "masks.zip"])
def test_killed_segment_resumes_to_the_uninterrupted_masks(synth, tmp_path, output):
    out = tmp_path / output
    killed("segment", synth / "images", out, after=3, env={ZIP_COMMIT_ENV: "0"})
    r = hpasc("segment", synth / "images", out)
    assert r.returncode == 0 and "3 skipped" in r.stdout + r.stderr, r.stdout + r.stderr
    segment_set(synth / "images", tmp_path / "clean", progress=False)
    assert tree(out) == tree(tmp_path / "clean")


def test_killed_zip_writer_temp_files_are_removed_by_the_next_run(synth, tmp_path):
    out = tmp_path / "r.zip"
    # the default interval: nothing committed yet when the process dies
    killed("resize", synth / "images", out, "--size", "32", after=3)
    leftovers = [p for p in tmp_path.iterdir() if ".hpasc-tmp-" in p.name]
    assert leftovers and not out.exists()
    assert hpasc("resize", synth / "images", out, "--size", "32").returncode == 0
    assert not [p for p in tmp_path.iterdir() if ".hpasc-tmp-" in p.name]
    with zipfile.ZipFile(out) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 4 * N_FIELDS


def test_a_live_writers_temp_file_is_kept(tmp_path):
    from hpasc.io.store import remove_dead_temporaries

    host = socket.gethostname()
    live = tmp_path / f".out.zip.hpasc-tmp-{host}-{os.getpid()}-abc"
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    dead = tmp_path / f".out.zip.hpasc-tmp-{host}-{dead_pid}-abc"
    foreign = tmp_path / f".out.zip.hpasc-tmp-elsewhere-{dead_pid}-abc"
    for p in (live, dead, foreign):
        p.write_bytes(b"x")
    assert remove_dead_temporaries(tmp_path, "out.zip") == 1
    assert live.exists() and not dead.exists() and foreign.exists()


def test_zip_output_commits_while_running(tmp_path, monkeypatch):
    store = Store(tmp_path / "x.zip")
    store.commit_every(0)
    store.write_bytes("a.txt", b"1")
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:  # on disk before close()
        assert zf.read("a.txt") == b"1"
    store.commit_every(None)
    store.write_bytes("b.txt", b"2")
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:
        assert zf.namelist() == ["a.txt"]
    store.close()
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:
        assert sorted(zf.namelist()) == ["a.txt", "b.txt"]


# --------------------------------------------------------------------------- training

_TRAIN = """
import os, signal, sys
import lightning as L
sys.path.insert(0, {tests!r})
from cam_helpers import ROOT, tiny_config
from hpasc.runconfig.cell_level import load_cell_level_config
from hpasc.train import cell_level, image_level

data, crops, run, kind, mode = sys.argv[1:6]


class Kill(L.Callback):
    # SIGKILL half way through epoch 1: last.ckpt holds epoch 0
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)


common = ["trainer.max_epochs=3", "data.batch_size=2", "predict.tta=none"]
if kind == "image-level":
    cfg = tiny_config(data, *common, "data.crop_size=96")
    train_fold = image_level.train_fold
else:
    cfg = load_cell_level_config(
        ROOT / "configs/cell-level/tiny.yaml",
        [f"data.root={{data}}", f"data.sources.0.crops={{crops}}", *common],
    )
    train_fold = cell_level.train_fold
train_fold(cfg, 0, run, resume=mode == "resume", callbacks=[Kill()] if mode == "kill" else [])
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image-level", "cell-level"])
def test_killed_training_resumes_to_the_uninterrupted_metrics_and_predictions(
    synth, tmp_path, kind
):
    script = tmp_path / "train.py"
    script.write_text(_TRAIN.format(tests=str(ROOT / "tests")))
    crops = tmp_path / "crops"
    if kind == "cell-level":
        crop_set(synth / "images", synth / "masks", crops, size=32, progress=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def train(run: str, mode: str) -> int:
        cmd = [sys.executable, str(script), str(synth), str(crops), str(tmp_path / run), kind, mode]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode in (0, -signal.SIGKILL), r.stderr[-3000:]
        return r.returncode

    assert train("clean", "full") == 0
    assert train("resumed", "kill") == -signal.SIGKILL
    assert train("resumed", "resume") == 0
    clean, resumed = tmp_path / "clean" / "fold-0", tmp_path / "resumed" / "fold-0"
    # the killed run's rows after its checkpoint are gone: the logs are equal row for row
    pd.testing.assert_frame_equal(
        pd.read_csv(clean / "metrics.csv"), pd.read_csv(resumed / "metrics.csv"), check_exact=True
    )
    assert pd.read_csv(clean / "metrics.csv")["epoch"].max() == 2
    for name in ("valid_cells.parquet", "valid_images.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(clean / name), pd.read_parquet(resumed / name), check_exact=True
        )


def test_resuming_a_fold_with_another_config_refuses(synth, tmp_path):
    from cam_helpers import tiny_config
    from hpasc.train.image_level import train_fold

    base = ["trainer.max_epochs=1", "data.crop_size=64", "predict.after_fit=false"]
    train_fold(tiny_config(synth, *base, "trainer.monitor=null"), 0, tmp_path)
    with pytest.raises(OutputError, match="was trained with optim.lr=0.003, not 0.01"):
        train_fold(tiny_config(synth, *base, "optim.lr=0.01"), 0, tmp_path, resume=True)
    # engineering keys may change on resume: one more epoch
    train_fold(tiny_config(synth, *base[1:], "trainer.max_epochs=2"), 0, tmp_path, resume=True)
    import torch

    ckpt = torch.load(tmp_path / "fold-0/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 1


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    from hpasc.train.callbacks import EpochSampler

    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(4)
    for epoch in range(5):  # b goes through every epoch, a jumps to 4 (a resume)
        b.set_epoch(epoch)
        orders = list(b)
    assert list(a) == orders and sorted(orders) == list(range(50))
    b.set_epoch(5)
    assert list(b) != orders


# --------------------------------------------------------------------------- the path rule


def test_relative_paths_follow_the_one_rule(tmp_path, monkeypatch):
    from hpasc.paths import anchor, anchor_overrides

    monkeypatch.chdir(tmp_path)
    assert anchor("out/masks") == str(tmp_path / "out" / "masks")
    assert anchor("masks", "/data/hpa") == "/data/hpa/masks"
    assert anchor("/abs/x", "/data") == "/abs/x" and anchor("s3://b/x") == "s3://b/x"
    assert anchor("x", "memory://b/root") == "memory://b/root/x"
    from hpasc.runconfig.image_level import SourceConfig

    assert anchor_overrides(
        ["data.sources.0.masks=out/m", "data.root=d", "data.sources.1.name=kaggle",
         "optim.lr=0.1", "data.sources.0.folds=null"], SourceConfig,
    ) == [f"data.sources.0.masks={tmp_path}/out/m", f"data.root={tmp_path}/d",
          "data.sources.1.name=kaggle", "optim.lr=0.1", "data.sources.0.folds=null"]  # fmt: skip


def test_recipe_variables_expand_to_absolute_paths(tmp_path, monkeypatch):
    from hpasc.pipeline.recipe import load_recipe, resolve

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n  - {name: a, kind: group}\n")
    recipe = load_recipe(path, data="in", work="out/demo")
    value = resolve(["${step:a}/x", "${data}", "${work}", "rel"], recipe, recipe.out_dir("a"), None)
    assert value == [
        f"{tmp_path}/out/demo/a/x", f"{tmp_path}/in", f"{tmp_path}/out/demo", "rel"
    ]  # fmt: skip


def test_config_file_paths_stay_relative_to_data_root(synth, tmp_path, monkeypatch):
    from cam_helpers import TINY
    from hpasc.paths import anchor
    from hpasc.runconfig.image_level import load_image_level_config

    monkeypatch.chdir(tmp_path)
    cfg = load_image_level_config(TINY, [f"data.root={synth}", "data.sources.0.masks=m"])
    assert cfg.data.sources[0].images == "images"  # from the file: joined onto data.root later
    assert anchor(cfg.data.sources[0].images, cfg.data.root) == str(synth / "images")
    assert cfg.data.sources[0].masks == str(tmp_path / "m")  # typed: relative to the cwd
