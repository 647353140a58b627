"""Resize, crops, cell table, crop records and the resize/crop verbs (resume, shards, errors)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hpasc.errors import HpascError
from hpasc.io.images import read_field, read_mask, write_channel, write_field, write_mask
from hpasc.io.store import Store
from hpasc.prepare import (
    cell_table,
    crop_cells,
    crop_set,
    list_crop_ids,
    read_crop_cell_table,
    read_crops,
    resize_image,
    resize_mask,
    resize_set,
    write_crops,
)
from hpasc.runner import FieldError

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared/data/hpa-real/kaggle-train"
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_crops import reference_crops  # noqa: E402 - the baseline lives with the benchmark

S = 192


def _blank_field(h: int, w: int, background: int = 250) -> np.ndarray:
    """RGBY field with a bright background (must never leak into crops)."""
    return np.full((h, w, 4), background, dtype=np.uint8)


def _random_field(rng: np.random.Generator, h: int = 96, w: int = 80, n: int = 7):
    """Overlapping random rectangles and discs (later ones paint over earlier ones)."""
    mask = np.zeros((h, w), dtype=np.uint16)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, n + 1):
        y, x = rng.integers(0, h), rng.integers(0, w)
        if k % 2:
            mask[y : y + rng.integers(2, 40), x : x + rng.integers(2, 40)] = k
        else:
            mask[(yy - y) ** 2 + (xx - x) ** 2 < rng.integers(4, 300)] = k
    image = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    image[..., 2] = np.maximum(image[..., 2], 1)  # blue signal in every cell
    return image, mask


# --------------------------------------------------------------------------- crop geometry


def test_single_square_cell_geometry():
    image = _blank_field(300, 400)
    mask = np.zeros((300, 400), dtype=np.uint16)
    mask[100:160, 150:210] = 1  # 60×60 cell
    for c, value in enumerate((10, 20, 30, 40)):
        image[100:160, 150:210, c] = value
    mask[10:30, 300:390] = 2  # another cell with other values: must not leak into cell 1
    image[10:30, 300:390] = 99

    crops, ids = crop_cells(image, mask, S)
    assert crops.shape == (2, 8, S, S) and crops.dtype == np.uint8
    assert ids.tolist() == [1, 2]
    cell = crops[0]
    for c, value in enumerate((10, 20, 30, 40)):
        center, whole = cell[2 * c], cell[2 * c + 1]
        # Order r,r,g,g,b,b,y,y; only the cell's own value or background zero.
        assert set(np.unique(center)) == {0, value}
        assert set(np.unique(whole)) == {value}  # square cell: whole view fills S×S
    # Uniform blue: centroid (129.5, 179.5) minus the 1e-6 guard, truncated → (129, 179).
    # Window rows start at cy - S//2 + 1 = 34, so cell row 100 sits at canvas row 66.
    rows, cols = np.nonzero(cell[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (66, 125, 66, 125)


def test_rectangular_cell_whole_view_long_side_is_s():
    image = _blank_field(200, 200)
    mask = np.zeros((200, 200), dtype=np.uint16)
    mask[50:80, 20:80] = 7  # 30 × 60
    image[50:80, 20:80] = 50
    crops, ids = crop_cells(image, mask, S)
    assert ids.tolist() == [7]
    rows, cols = np.nonzero(crops[0, 1])
    # r = 192/60 = 3.2 → 96 × 192, pasted at row (192-96)//2 = 48.
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (48, 144, 0, 192)
    for plane in crops[0]:
        assert set(np.unique(plane)) <= {0, 50}


def test_center_window_follows_blue_weighted_centroid():
    image = _blank_field(400, 400, background=0)
    mask = np.zeros((400, 400), dtype=np.uint16)
    mask[100:300, 100:200] = 1
    image[100:300, 100:200, 0] = 80
    image[..., 2] = 0
    image[240:250, 150:160, 2] = 200  # the nucleus: centroid (244.5, 154.5) → (244, 154)
    crops, _ = crop_cells(image, mask, S)
    y0, x0 = 244 - S // 2 + 1, 154 - S // 2 + 1
    rows, cols = np.nonzero(crops[0, 0])
    assert rows.min() == 0 and rows.max() == 300 - 1 - y0  # window clipped by the cell top
    assert cols.min() == 100 - x0 and cols.max() == 200 - 1 - x0
    rows, cols = np.nonzero(crops[0, 4])
    assert (rows.min(), cols.min()) == (240 - y0, 150 - x0)


def test_cell_without_blue_uses_geometric_centre():
    image = _blank_field(200, 200, background=0)
    mask = np.zeros((200, 200), dtype=np.uint16)
    mask[150:170, 150:190] = 1
    image[150:170, 150:190, 0] = 9
    crops, _ = crop_cells(image, mask, 64)
    assert crops[0, 0].sum() == 9 * 20 * 40  # the whole cell is inside its window


@pytest.mark.parametrize("seed", range(4))
def test_crops_equal_reference_algorithm(seed):
    rng = np.random.default_rng(seed)
    image, mask = _random_field(rng)
    channels = [image[..., c] for c in range(4)]
    for size in (32, 33):
        ours, ids = crop_cells(image, mask, size)
        ref, ref_ids = reference_crops(lambda: channels, mask, size)
        assert ids.tolist() == ref_ids.tolist()
        np.testing.assert_array_equal(ours, ref)


def test_uint16_field_is_converted_like_io():
    from hpasc.io.images import to_uint8

    rng = np.random.default_rng(5)
    image, mask = _random_field(rng)
    wide = image.astype(np.uint16) * 257 + rng.integers(0, 257, image.shape).astype(np.uint16)
    np.testing.assert_array_equal(
        crop_cells(wide, mask, 32)[0], crop_cells(to_uint8(wide), mask, 32)[0]
    )


def test_more_than_255_cells():
    mask = np.zeros((120, 120), dtype=np.uint16)
    for k in range(300):
        y, x = divmod(k, 20)
        mask[y * 6 : y * 6 + 4, x * 6 : x * 6 + 4] = k + 1
    image = _blank_field(120, 120, background=0)
    image[mask > 0] = 77
    crops, ids = crop_cells(image, mask, 16)
    assert ids.tolist() == list(range(1, 301))
    assert crops.shape == (300, 8, 16, 16)
    assert (crops[:, 1::2] == 77).all()  # 4×4 squares: every whole view is full
    table = cell_table(mask, "f")
    assert table["cell_id"].tolist() == list(range(1, 301))
    assert (table["area"] == 16).all()


def test_empty_mask_gives_no_crops():
    crops, ids = crop_cells(_blank_field(50, 50), np.zeros((50, 50), np.uint16), 32)
    assert crops.shape == (0, 8, 32, 32) and ids.shape == (0,)


def test_crop_errors():
    with pytest.raises(ValueError, match="sizes differ"):
        crop_cells(_blank_field(50, 50), np.zeros((40, 50), np.uint16))
    with pytest.raises(ValueError, match="H×W×4"):
        crop_cells(np.zeros((50, 50, 3), np.uint8), np.zeros((50, 50), np.uint16))


# --------------------------------------------------------------------------- resize


def test_resize_mask_keeps_labels_exactly():
    rng = np.random.default_rng(1)
    mask = np.zeros((512, 512), dtype=np.uint16)
    for k, label in enumerate(rng.choice(65535, 40, replace=False) + 1):
        y, x = divmod(k, 8)
        mask[y * 64 : y * 64 + 60, x * 64 : x * 64 + 60] = label
    up = resize_mask(mask, 1024)
    assert up.dtype == np.uint16
    assert set(np.unique(up)) == set(np.unique(mask))
    down = resize_mask(mask, 200)
    assert set(np.unique(down)) == set(np.unique(mask))  # no blended, no lost label
    odd = resize_mask(mask, 177)
    assert set(np.unique(odd)) <= set(np.unique(mask))
    with pytest.raises(ValueError, match="65535"):
        resize_mask(np.full((4, 4), 70000, np.int32), 2)


def test_resize_image_uses_area_when_shrinking_and_keeps_depth():
    checker = ((np.indices((64, 64)).sum(0) % 2) * 60000).astype(np.uint16)
    small = resize_image(checker, 32)
    assert small.dtype == np.uint16 and small.shape == (32, 32)
    assert (small == 30000).all()  # area averaging: no aliasing of the 1-px pattern
    np.testing.assert_array_equal(
        small, cv2.resize(checker, (32, 32), interpolation=cv2.INTER_AREA)
    )
    big = resize_image(checker[..., None].repeat(4, axis=2), 100)
    assert big.shape == (100, 100, 4) and big.dtype == np.uint16
    assert resize_image(checker[:, :40], 32).shape == (32, 32)  # non-square → S×S
    with pytest.raises(ValueError, match="interpolation"):
        resize_image(checker, 10, "bicubic")


# --------------------------------------------------------------------------- cell table


def test_cell_table_on_hand_made_mask():
    mask = np.zeros((10, 12), dtype=np.uint16)
    mask[0:3, 0:4] = 1  # 12 px at the corner
    mask[5:7, 6:9] = 3  # 6 px inside
    mask[8, 6:9] = 3  # + 3 px (same cell, split)
    mask[4:6, 11] = 5  # 2 px on the right edge
    table = cell_table(mask, "img")
    assert table.columns.tolist() == [
        "image_id", "cell_id", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
        "centroid_y", "centroid_x", "touches_edge",
    ]  # fmt: skip
    assert table["image_id"].tolist() == ["img"] * 3
    assert table["cell_id"].tolist() == [1, 3, 5]
    assert table["area"].tolist() == [12, 9, 2]
    assert table[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].values.tolist() == [
        [0, 0, 3, 4], [5, 6, 9, 9], [4, 11, 6, 12],
    ]  # fmt: skip
    np.testing.assert_allclose(table["centroid_y"], [1.0, (5 * 3 + 6 * 3 + 8 * 3) / 9, 4.5])
    np.testing.assert_allclose(table["centroid_x"], [1.5, 7.0, 11.0])
    assert table["touches_edge"].tolist() == [True, False, True]

    scaled = cell_table(mask, "img", orig_shape=(20, 36))
    np.testing.assert_allclose(scaled["area_orig"], [12 * 6, 9 * 6, 2 * 6])
    np.testing.assert_allclose(scaled["bbox_x1_orig"], [12, 27, 36])
    np.testing.assert_allclose(scaled["centroid_y_orig"], 2 * table["centroid_y"] + 0.5)

    orig = np.kron(mask, np.ones((2, 3), dtype=np.uint16))
    orig[orig == 5] = 0  # a cell missing at original size
    exact = cell_table(mask, "img", orig_mask=orig)
    assert exact["area_orig"].tolist()[:2] == [72, 54]
    assert np.isnan(exact["area_orig"].iloc[2])
    np.testing.assert_allclose(exact["centroid_x_orig"][:2], [5.5, 22.0])  # (x + 0.5)·3 - 0.5


# --------------------------------------------------------------------------- records and sets


def _make_set(folder: Path, n: int = 6, side: int = 96, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = [f"field{i:02d}" for i in range(n)]
    with Store(folder / "images") as images, Store(folder / "masks") as masks:
        for field_id in ids:
            image, mask = _random_field(rng, side, side)
            write_field(images, field_id, image)
            write_mask(masks, field_id, mask)
    return ids


def test_crop_record_round_trip_in_zip(tmp_path):
    crops = np.random.default_rng(0).integers(0, 256, (3, 8, 16, 16), dtype=np.uint8)
    with Store(tmp_path / "c.zip/sub") as store:
        write_crops(store, "a", crops, np.array([2, 5, 9]))
        write_crops(store, "empty", crops[:0], np.zeros(0))
    store = Store(tmp_path / "c.zip/sub")
    got, ids = read_crops(store, "a")
    np.testing.assert_array_equal(got, crops)
    assert ids.dtype == np.int32 and ids.tolist() == [2, 5, 9]
    assert read_crops(store, "empty")[0].shape == (0, 8, 16, 16)
    assert list_crop_ids(store) == ["a", "empty"]
    with pytest.raises(HpascError, match="no crop record"):
        read_crops(store, "zzz")


@pytest.mark.parametrize("out_name", ["crops", "crops.zip/inner"])
def test_crop_set_records_and_table(tmp_path, out_name):
    ids = _make_set(tmp_path)
    # A field without cells stays present downstream (empty record).
    write_mask(Store(tmp_path / "masks"), ids[0], np.zeros((96, 96), np.uint16))
    summary = crop_set(
        tmp_path / "images",
        tmp_path / "masks",
        tmp_path / out_name,
        size=32,
        orig_masks=tmp_path / "masks",
        progress=False,
    )
    assert (summary.done, summary.failed) == (6, 0)
    out = Store(tmp_path / out_name)
    assert list_crop_ids(out) == ids
    assert read_crops(out, ids[0])[0].shape == (0, 8, 32, 32)
    table = pd.read_parquet(io.BytesIO(out.read_bytes("cells.parquet")))
    images, masks = Store(tmp_path / "images"), Store(tmp_path / "masks")
    expected = []
    for field_id in ids:
        crops, cell_ids = read_crops(out, field_id)
        ref, ref_ids = crop_cells(read_field(images, field_id), read_mask(masks, field_id), 32)
        np.testing.assert_array_equal(crops, ref)
        assert cell_ids.tolist() == ref_ids.tolist()
        expected.append(cell_table(read_mask(masks, field_id), field_id, orig_shape=(96, 96)))
    expected = pd.concat(expected, ignore_index=True)
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    pd.testing.assert_frame_equal(read_crop_cell_table(out), expected, check_dtype=False)


def test_crop_set_shards_are_complete_and_merge(tmp_path):
    ids = _make_set(tmp_path, n=7)
    args = (tmp_path / "images", tmp_path / "masks")
    per_shard = []
    for i in range(3):
        crop_set(*args, tmp_path / f"s{i}", size=32, shard=f"{i}/3", progress=False)
        per_shard.append(list_crop_ids(Store(tmp_path / f"s{i}")))
        assert Store(tmp_path / f"s{i}").exists(f"cells-{i}-of-3.parquet")
    union = [x for s in per_shard for x in s]
    assert sorted(union) == ids and len(set(union)) == len(union)

    # Shards into one store, then an unsharded run: all skipped, full table written.
    for i in range(3):
        crop_set(*args, tmp_path / "all", size=32, shard=(i, 3), progress=False)
    summary = crop_set(*args, tmp_path / "all", size=32, progress=False)
    assert (summary.done, summary.skipped) == (0, 7)
    merged = pd.read_parquet(tmp_path / "all" / "cells.parquet")
    crop_set(*args, tmp_path / "clean", size=32, progress=False)
    pd.testing.assert_frame_equal(merged, pd.read_parquet(tmp_path / "clean" / "cells.parquet"))


def test_crop_set_resolution_mismatch_names_field(tmp_path):
    ids = _make_set(tmp_path, n=3)
    write_mask(Store(tmp_path / "masks"), ids[1], np.zeros((48, 96), np.uint16))
    with pytest.raises(
        FieldError, match=f"field {ids[1]}: mask {ids[1]}.png .* 48×96 but the image is 96×96"
    ):
        crop_set(tmp_path / "images", tmp_path / "masks", tmp_path / "out", size=32, progress=False)


def test_resize_set_images_and_masks(tmp_path):
    ids = _make_set(tmp_path, n=3)
    wide = np.random.default_rng(3).integers(0, 65536, (96, 96), dtype=np.uint16)
    write_channel(Store(tmp_path / "images"), ids[0], "green", wide)
    resize_set(tmp_path / "images", tmp_path / "r.zip/x", size=48, progress=False)
    out = Store(tmp_path / "r.zip/x")
    field = read_field(out, ids[0])
    assert field.shape == (48, 48, 4) and field.dtype == np.uint16  # 16-bit green kept
    np.testing.assert_array_equal(field[..., 1], resize_image(wide, 48))
    resize_set(tmp_path / "images", tmp_path / "r8", size=48, dtype="uint8", progress=False)
    assert read_field(Store(tmp_path / "r8"), ids[0]).dtype == np.uint8

    summary = resize_set(tmp_path / "masks", tmp_path / "m", size=192, masks=True, progress=False)
    assert summary.done == 3
    for field_id in ids:
        before = read_mask(Store(tmp_path / "masks"), field_id)
        after = read_mask(Store(tmp_path / "m"), field_id)
        np.testing.assert_array_equal(after, np.kron(before, np.ones((2, 2), np.uint16)))
    again = resize_set(tmp_path / "masks", tmp_path / "m", size=192, masks=True, progress=False)
    assert (again.done, again.skipped) == (0, 3)
    again = resize_set(
        tmp_path / "masks", tmp_path / "m", size=192, masks=True, overwrite=True, progress=False
    )
    assert again.done == 3


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "hpasc.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_resume_after_kill_matches_clean_run(tmp_path):
    _make_set(tmp_path, n=40, side=256)
    images, masks = tmp_path / "images", tmp_path / "masks"
    assert _cli("crop", images, masks, tmp_path / "clean", "--size", 64).returncode == 0

    out = tmp_path / "resumed"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpasc.cli", "crop", images, masks, out, "--size", "64"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.crops"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(out.glob("*.crops")))
    assert 3 <= partial < 40, "the run must be killed midway"
    assert not (out / "cells.parquet").exists()

    result = _cli("crop", images, masks, out, "--size", 64)
    assert result.returncode == 0, result.stderr
    assert f"{40 - partial} done, {partial} skipped" in result.stdout
    resumed = {k: v for k, v in _tree(out).items() if ".hpasc-tmp-" not in k}
    assert resumed == _tree(tmp_path / "clean")


@pytest.mark.parametrize("out_name", ["out", "out.zip/x"])
def test_crop_set_failure_stops_or_is_logged(tmp_path, out_name):
    ids = _make_set(tmp_path, n=4)
    (tmp_path / "images" / f"{ids[1]}_blue.png").write_bytes(b"\x89PNG broken")
    args = (tmp_path / "images", tmp_path / "masks", tmp_path / out_name)
    with pytest.raises(FieldError, match=f"^field {ids[1]}: .*{ids[1]}_blue.png"):
        crop_set(*args, size=32, progress=False)
    # What finished before the stop is kept (committed, for a zip) and skipped on resume.
    assert list_crop_ids(tmp_path / out_name) == ids[:1]
    summary = crop_set(*args, size=32, on_error="skip", progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (2, 1, 1)
    errors = pd.read_csv(io.BytesIO(Store(tmp_path / out_name).read_bytes("errors.csv")))
    assert errors["id"].tolist() == [ids[1]]


@pytest.mark.parametrize("workers", ["2"])
def test_cli_on_error_stop_and_skip(tmp_path, workers):
    ids = _make_set(tmp_path, n=4)
    (tmp_path / "images" / f"{ids[2]}_red.png").write_bytes(b"not a png")
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"

    result = _cli("crop", images, masks, out, "--size", 32, "--workers", workers)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: field {ids[2]}: ") and f"{ids[2]}_red.png" in lines[-1]

    result = _cli(
        "crop", images, masks, out, "--size", 32, "--workers", workers, "--on-error", "skip"
    )
    assert result.returncode == 1
    assert "1 failed" in result.stdout
    rows = pd.read_csv(out / "errors.csv")
    assert rows["id"].tolist() == [ids[2]]
    assert f"{ids[2]}_red.png" in rows["error"][0]
    assert list_crop_ids(Store(out)) == [i for i in ids if i != ids[2]]
    table = pd.read_parquet(out / "cells.parquet")
    assert ids[2] not in set(table["image_id"])


def test_resize_set_bad_options(tmp_path):
    _make_set(tmp_path, n=1)
    with pytest.raises(HpascError, match=r"bad --shard '2/2'"):
        resize_set(tmp_path / "images", tmp_path / "o", size=8, shard="2/2", progress=False)
    with pytest.raises(HpascError, match="--dtype"):
        resize_set(tmp_path / "images", tmp_path / "o", size=8, dtype="f4", progress=False)
    with pytest.raises(HpascError, match="--interpolation"):
        resize_set(tmp_path / "images", tmp_path / "o", size=8, interpolation="x", progress=False)
    with pytest.raises(HpascError, match="no images"):
        resize_set(tmp_path / "masks", tmp_path / "o", size=8, progress=False)


# --------------------------------------------------------------------------- real data


def test_real_field_resize_and_crop(tmp_path, hpa_real):
    resize_set(REAL / "images", tmp_path / "img", size=384, progress=False)
    resize_set(REAL / "masks", tmp_path / "msk", size=384, masks=True, progress=False)
    crop_set(
        tmp_path / "img",
        tmp_path / "msk",
        tmp_path / "crops",
        size=64,
        orig_masks=REAL / "masks",
        progress=False,
    )
    field_id = list_crop_ids(Store(tmp_path / "crops"))[0]
    crops, ids = read_crops(Store(tmp_path / "crops"), field_id)
    image = read_field(Store(tmp_path / "img"), field_id)
    mask = read_mask(Store(tmp_path / "msk"), field_id)
    assert ids.tolist() == sorted(set(np.unique(mask)) - {0})
    ref, _ = reference_crops(lambda: [image[..., c] for c in range(4)], mask, 64)
    np.testing.assert_array_equal(crops, ref)
    table = pd.read_parquet(tmp_path / "crops" / "cells.parquet")
    orig = read_mask(Store(REAL / "masks"), field_id)
    np.testing.assert_array_equal(table["area_orig"], np.bincount(orig.ravel())[ids])
