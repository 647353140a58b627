"""Synthetic HPA-like data: layout, per-cell labels and patterns, files, determinism, CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_util
from scipy import ndimage

from hpasc.classes import NEGATIVE
from hpasc.errors import OutputError
from hpasc.io.images import CHANNELS
from hpasc.synth import (
    PATTERN_CLASSES,
    field_id,
    field_rng,
    make_field,
    synthesize,
)

SRC = Path(__file__).resolve().parents[1] / "src"
NUCLEAR = {0, 1, 2, 4, 5}
CYTOPLASMIC = {12, 13, 14, 15, 16, 17}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _labels(text: str) -> set[int]:
    return {int(x) for x in str(text).split("|")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    synthesize(out, n_images=6, size=200, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def fields() -> list:
    return [make_field(field_rng(11, i), 160) for i in range(50)]


def test_layout_of_the_set(dataset: Path) -> None:
    ids = [field_id(3, i) for i in range(6)]
    names = {p.name for p in (dataset / "images").iterdir()}
    assert names == {f"{i}_{c}.png" for i in ids for c in CHANNELS}
    assert {p.name for p in (dataset / "masks").iterdir()} == {f"{i}.png" for i in ids}
    train = pd.read_csv(dataset / "train.csv")
    assert list(train.columns) == ["ID", "Label"] and train["ID"].tolist() == ids
    for i in ids:
        # 200 is not a multiple of 32: every file keeps the exact size
        for c in CHANNELS:
            img = cv2.imread(str(dataset / "images" / f"{i}_{c}.png"), cv2.IMREAD_UNCHANGED)
            assert img.shape == (200, 200) and img.dtype == np.uint8
        mask = cv2.imread(str(dataset / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (200, 200) and mask.dtype == np.uint16


def test_image_label_is_union_of_cell_labels(dataset: Path) -> None:
    train = pd.read_csv(dataset / "train.csv", dtype=str)
    cells = pd.read_csv(dataset / "cells.csv", dtype={"labels": str})
    for fid, label in zip(train["ID"], train["Label"], strict=True):
        rows = cells[cells["image_id"] == fid]
        union = set().union(*(_labels(x) for x in rows["labels"]))
        assert _labels(label) == union
        mask = cv2.imread(str(dataset / "masks" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
        assert sorted(rows["cell_id"]) == list(range(1, int(mask.max()) + 1))
        assert set(np.unique(mask)) - {0} == set(rows["cell_id"])


def test_solution_decodes_back_to_the_masks(dataset: Path) -> None:
    solution = pd.read_csv(dataset / "solution.csv")
    assert list(solution.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    cells = pd.read_csv(dataset / "cells.csv", dtype={"labels": str})
    expected = {(r.image_id, r.cell_id): _labels(r.labels) for r in cells.itertuples()}
    found: dict[tuple[str, int], set[int]] = {}
    for row in solution.itertuples():
        assert (row.ImageWidth, row.ImageHeight) == (200, 200)
        mask = cv2.imread(str(dataset / "masks" / f"{row.ID}.png"), cv2.IMREAD_UNCHANGED)
        tokens = row.PredictionString.split(" ")
        assert len(tokens) % 2 == 0
        for label, text in zip(tokens[::2], tokens[1::2], strict=True):
            counts = zlib.decompress(base64.b64decode(text))
            binary = mask_util.decode({"size": [200, 200], "counts": counts}).astype(bool)
            ids = np.unique(mask[binary])
            assert len(ids) == 1 and ids[0] > 0
            np.testing.assert_array_equal(binary, mask == ids[0])
            found.setdefault((row.ID, int(ids[0])), set()).add(int(label))
    assert found == expected


def test_cells_are_single_regions_and_cover_the_mask(fields: list) -> None:
    for f in fields:
        n = int(f.mask.max())
        assert f.mask.dtype == np.uint16 and f.image.dtype == np.uint8
        assert f.image.shape == (160, 160, 4)
        assert set(f.cell_labels) == set(range(1, n + 1)) == set(np.unique(f.mask)) - {0}
        for c in range(1, n + 1):
            _, parts = ndimage.label(f.mask == c)  # 4-connectivity
            assert parts == 1, f"cell {c} has {parts} parts"
        assert (f.mask == 0).any(), "some background"


def test_cell_count_scales_with_size() -> None:
    counts = [int(make_field(field_rng(5, i), 256).mask.max()) for i in range(12)]
    assert min(counts) >= 8 and max(counts) <= 25 and len(set(counts)) > 3


def test_classes_and_weak_labels(fields: list) -> None:
    seen = set()
    mixed = 0
    for f in fields:
        cell_sets = [frozenset(v) for v in f.cell_labels.values()]
        for labels in cell_sets:
            seen |= labels
            assert 1 <= len(labels) <= 2
            assert NEGATIVE not in labels or len(labels) == 1
        assert f.image_labels == sorted(set().union(*cell_sets))
        positive = {k for s in cell_sets for k in s} - {NEGATIVE}
        assert len(positive) <= 2  # a field-specific pattern of 1-2 classes
        if positive and any(NEGATIVE in s for s in cell_sets):
            mixed += 1
    assert len(seen) >= 12, sorted(seen)
    assert seen <= set(PATTERN_CLASSES) | {NEGATIVE}
    assert mixed >= 20, "Negative cells should sit beside positive ones in most fields"


def _cell_stats(fields: list) -> dict[int, list[tuple[float, float, float, float]]]:
    """Per single-label cell: (green mean, share of green in the nucleus, corr. with red, yellow)."""
    stats: dict[int, list] = {}
    for f in fields:
        r, g, b, y = (f.image[..., i].astype(np.float32) for i in range(4))
        for c, labels in f.cell_labels.items():
            if len(labels) != 1:
                continue
            cell = f.mask == c
            if cell.sum() < 60:
                continue
            nucleus = cell & (b > 0.4 * b[cell].max())
            nucleus = cv2.dilate(nucleus.view(np.uint8), np.ones((3, 3), np.uint8)) > 0
            signal = np.clip(g - np.median(g[cell]), 0, None)
            share = signal[nucleus & cell].sum() / max(signal[cell].sum(), 1e-6)
            corr_r = np.corrcoef(g[cell], r[cell])[0, 1]
            corr_y = np.corrcoef(g[cell], y[cell])[0, 1]
            stats.setdefault(labels[0], []).append((g[cell].mean(), share, corr_r, corr_y))
    return stats


def test_green_follows_each_cells_own_labels() -> None:
    fields = [make_field(field_rng(21, i), 256) for i in range(40)]
    stats = _cell_stats(fields)
    negative = np.array(stats[NEGATIVE])
    for k in PATTERN_CLASSES:
        if k not in stats:
            continue
        s = np.array(stats[k])
        # the protein is where the class says: nucleus, cytoplasm, or the red/yellow structures
        if k in NUCLEAR:
            assert np.median(s[:, 1]) > 0.6, (k, np.median(s[:, 1]))
        if k in CYTOPLASMIC:
            assert np.median(s[:, 1]) < 0.35, (k, np.median(s[:, 1]))
        if k == 10:
            assert np.median(s[:, 2]) > 0.8 > np.median(negative[:, 2])
        if k == 6:
            assert np.median(s[:, 3]) > 0.8 > np.median(negative[:, 3])
        # a cell with a pattern is brighter than the Negative cells (dim noise only)
        assert np.median(s[:, 0]) > np.median(negative[:, 0]), k
    assert len(stats) >= 12


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, dataset: Path) -> None:
    synthesize(tmp_path / "a", n_images=6, size=200, seed=3, progress=False)
    synthesize(tmp_path / "b", n_images=6, size=200, seed=4, progress=False)
    same, other = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert same == _files(dataset)
    assert set(other) != set(same)
    assert other["train.csv"] != same["train.csv"]


def test_fields_do_not_depend_on_the_set_size(tmp_path: Path, dataset: Path) -> None:
    synthesize(tmp_path / "two", n_images=2, size=200, seed=3, progress=False)
    small, big = _files(tmp_path / "two"), _files(dataset)
    assert all(
        big[name] == data for name, data in small.items() if name.startswith(("images", "masks"))
    )


def test_sixteen_bit(tmp_path: Path, dataset: Path) -> None:
    synthesize(tmp_path / "s16", n_images=1, size=200, seed=3, bit_depth=16, progress=False)
    fid = field_id(3, 0)
    for c in CHANNELS:
        wide = cv2.imread(str(tmp_path / "s16/images" / f"{fid}_{c}.png"), cv2.IMREAD_UNCHANGED)
        narrow = cv2.imread(str(dataset / "images" / f"{fid}_{c}.png"), cv2.IMREAD_UNCHANGED)
        assert wide.dtype == np.uint16
        np.testing.assert_array_equal(wide, narrow.astype(np.uint16) * 257)
    rows = (dataset / "train.csv").read_text().splitlines()[:2]
    assert (tmp_path / "s16/train.csv").read_text().splitlines() == rows


def test_existing_output(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        synthesize(file, n_images=1, size=128, seed=0, progress=False)
    with pytest.raises(OutputError, match="writable"):
        synthesize(file / "below", n_images=1, size=128, seed=0, progress=False)
    out = tmp_path / "set"
    synthesize(out, n_images=3, size=128, seed=0, progress=False)
    with pytest.raises(OutputError, match="--overwrite"):
        synthesize(out, n_images=1, size=128, seed=0, progress=False)
    (out / "notes.txt").write_text("mine")
    synthesize(out, n_images=1, size=128, seed=0, overwrite=True, progress=False)
    assert len(list((out / "images").iterdir())) == 4  # the old fields are gone
    assert len(pd.read_csv(out / "train.csv")) == 1
    assert (out / "notes.txt").read_text() == "mine"  # foreign files are left alone
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    synthesize(empty, n_images=1, size=128, seed=0, progress=False)
    assert (empty / "solution.csv").exists()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="127"):
        make_field(np.random.default_rng(0), 127)
    with pytest.raises(ValueError, match="12"):
        synthesize("unused", n_images=1, size=128, seed=0, bit_depth=12)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "hpasc.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_twice_identical_and_error_on_a_file(tmp_path: Path) -> None:
    for name in ("one", "two"):
        done = _cli("synth", name, "--n-images", "3", "--size", "256", "--seed", "1", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "3 fields" in done.stdout
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert len(_files(tmp_path / "one")) == 3 * 5 + 3
    (tmp_path / "taken").write_text("x")
    done = _cli("synth", "taken", "--n-images", "1", "--size", "128", cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "taken" in lines[0]
    assert "Traceback" not in done.stderr


def test_speed(tmp_path: Path) -> None:
    start = time.perf_counter()
    synthesize(tmp_path / "fast", n_images=20, size=512, seed=0, progress=False)
    elapsed = time.perf_counter() - start
    # budget: 100 fields of 512² in 30 s on one core; 20 fields get 15 s of slack
    assert elapsed < 15, f"20 fields of 512² took {elapsed:.1f} s"
