"""`hpasc segment` and segment_set: masks on disk, resume, shards, batching, errors."""

import numpy as np
import pytest

from hpasc.io.images import read_mask, write_field
from hpasc.io.store import Store
from hpasc.segment import SEGMENTERS, SegmentationResult, Segmenter
from hpasc.segment.evaluate import match_f1
from hpasc.segment.sets import segment_set

KAGGLE_ID = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"


def test_cli_segments_the_real_kaggle_field_and_resumes(cli, hpa_real, tmp_path, report_metric):
    images = hpa_real / "kaggle-train/images"
    out, nuclei = tmp_path / "masks", tmp_path / "nuclei"
    result = cli("segment", images, out, "--nuclei-out", nuclei, check=True)
    assert "1 done" in result.stdout
    cells = read_mask(Store(out), KAGGLE_ID)
    truth = read_mask(Store(hpa_real / "kaggle-train/masks"), KAGGLE_ID)
    f1, precision, recall = match_f1(cells, truth)
    report = f"hpasc segment (classical) on {KAGGLE_ID}: F1 {f1:.3f} vs the HPA mask"
    report_metric(report)
    assert f1 >= 0.85, report
    nucleus_mask = read_mask(Store(nuclei), KAGGLE_ID)
    assert nucleus_mask.shape == cells.shape and set(np.unique(nucleus_mask)) <= set(
        np.unique(cells)
    )
    again = cli("segment", images, out, "--nuclei-out", nuclei, check=True)
    assert "0 done, 1 skipped" in again.stdout


def test_cli_rejects_network_options_for_classical_and_missing_weights(cli, hpa_real, tmp_path):
    images = hpa_real / "kaggle-train/images"
    result = cli("segment", images, tmp_path / "m", "--nuclei-model", tmp_path / "n.pth")
    assert result.returncode == 2 and "only for --method hpa-unet" in result.stderr
    result = cli(
        "segment", images, tmp_path / "m", "--method", "hpa-unet",
        "--nuclei-model", tmp_path / "n.pth", "--cell-model", tmp_path / "c.pth",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Zenodo record 4665863" in result.stderr


def _grid_field(n: int, pitch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    side = n * pitch
    yy, xx = np.mgrid[:side, :side]
    cy, cx = (yy // pitch) * pitch + pitch // 2, (xx // pitch) * pitch + pitch // 2
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    image = np.zeros((side, side, 4), np.uint8)
    image[..., 0] = np.where(r2 < (0.42 * pitch) ** 2, 150, 3)
    image[..., 1] = rng.integers(0, 20, (side, side), dtype=np.uint8)
    image[..., 2] = np.where(r2 < (0.2 * pitch) ** 2, 200, 2)
    return image


def test_more_than_255_cells_round_trip_as_16_bit_png(tmp_path):
    images = Store(tmp_path / "images")
    write_field(images, "dense", _grid_field(17, 60))  # 289 cells
    summary = segment_set(
        images,
        tmp_path / "masks",
        method_options={"working_size": 1020, "input_scale": 0.5},
        progress=False,
    )
    assert summary.done == 1
    mask = read_mask(Store(tmp_path / "masks"), "dense")
    assert mask.dtype == np.uint16 and mask.max() == 289 and len(np.unique(mask)) == 290


def test_shards_are_disjoint_and_complete_and_workers_give_the_same_masks(tmp_path):
    images = Store(tmp_path / "images")
    for i in range(5):
        write_field(images, f"f{i}", _grid_field(3, 64, seed=i))
    for k in range(2):
        segment_set(images, tmp_path / "sharded", shard=f"{k}/2", progress=False)
    segment_set(images, tmp_path / "pooled", workers=2, progress=False)
    sharded, pooled = Store(tmp_path / "sharded"), Store(tmp_path / "pooled")
    assert sharded.list() == pooled.list() == [f"f{i}.png" for i in range(5)]
    for name in pooled.list():
        assert sharded.read_bytes(name) == pooled.read_bytes(name)


class _CountingBatched(Segmenter):
    """A batched segmenter that records its batches (stands for the network method)."""

    name = "counting"
    batched = True
    batches: list[int] = []

    def __init__(self, batch_size: int = 4, workers: int = 1):
        self.batch_size = batch_size

    def segment_batch(self, images):
        type(self).batches.append(len(images))
        if any(image.shape[0] == 33 for image in images):
            raise ValueError("this size breaks the network")
        return [self.segment(image) for image in images]

    def segment(self, image):
        if image.shape[0] == 33:
            raise ValueError("this size breaks the network")
        labels = (image[..., 2] > 100).astype(np.uint16)
        return SegmentationResult(cells=labels, nuclei=labels)


def test_batched_method_groups_fields_and_isolates_failures(tmp_path, monkeypatch):
    monkeypatch.setitem(SEGMENTERS, "counting", _CountingBatched)
    _CountingBatched.batches = []
    images = Store(tmp_path / "images")
    for i in range(5):
        write_field(images, f"f{i}", _grid_field(2, 32, seed=i))
    write_field(images, "f5", np.zeros((33, 33, 4), np.uint8))  # fails inside the batch
    images.write_bytes("f6_red.png", b"not a png")  # fails when read
    for c in ("green", "blue", "yellow"):
        images.write_bytes(f"f6_{c}.png", b"not a png")
    summary = segment_set(
        images, tmp_path / "masks", method="counting", batch_size=3, on_error="skip", progress=False
    )
    assert (summary.done, summary.failed) == (5, 2)
    # batches of 3 pending fields: (f0 f1 f2), (f3 f4 f5 -> retried one by one), (f6 unreadable)
    assert _CountingBatched.batches == [3, 3]
    errors = (tmp_path / "masks" / "errors.csv").read_text()
    assert "f5," in errors and "f6," in errors
    assert sorted(Store(tmp_path / "masks").list("*.png")) == [f"f{i}.png" for i in range(5)]
    # Resume: only the failed fields are attempted again.
    _CountingBatched.batches = []
    again = segment_set(
        images, tmp_path / "masks", method="counting", batch_size=3, on_error="skip", progress=False
    )
    assert (again.skipped, again.failed) == (5, 2) and _CountingBatched.batches == [1]


def test_bad_arguments_are_input_errors(tmp_path):
    from hpasc.errors import InputError

    with pytest.raises(InputError, match="no images"):
        segment_set(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="--method must be one of"):
        segment_set(tmp_path, tmp_path / "out", method="magic", progress=False)


@pytest.mark.slow
def test_cli_hpa_unet_with_a_weight_file(cli, tmp_path):
    import torch

    from hpasc.segment.dpn_unet import DPNUnet

    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save(DPNUnet().state_dict(), weights)
    images = Store(tmp_path / "images")
    for i in range(3):
        write_field(images, f"f{i}", _grid_field(2, 128, seed=i))
    images.close()
    out = tmp_path / "masks"
    result = cli(
        "segment", tmp_path / "images", out, "--method", "hpa-unet", "--device", "cpu",
        "--nuclei-model", weights, "--cell-model", weights, "--batch-size", "2",
        check=True,
    )  # fmt: skip
    assert "3 done" in result.stdout
    for i in range(3):
        assert read_mask(Store(out), f"f{i}").shape == (256, 256)
    fast = tmp_path / "masks-fast"
    result = cli(
        "segment", tmp_path / "images", fast, "--method", "hpa-unet", "--device", "cpu",
        "--nuclei-model", weights, "--cell-model", weights, "--preset", "fast",
        "--label-scale", "1.0", "--uint8-labels",
        check=True,
    )  # fmt: skip
    assert "3 done" in result.stdout and read_mask(Store(fast), "f0").shape == (256, 256)


def test_cli_crop_after_segment_on_the_real_field(cli, hpa_real, tmp_path):
    images = hpa_real / "kaggle-train/images"
    cli("segment", images, tmp_path / "masks", check=True)
    cli("crop", images, tmp_path / "masks", tmp_path / "crops", "--size", "192", check=True)
    import pandas as pd

    from hpasc.prepare import read_crops

    crops, ids = read_crops(str(tmp_path / "crops"), KAGGLE_ID)
    table = pd.read_parquet(tmp_path / "crops" / "cells.parquet")
    assert crops.shape == (len(ids), 8, 192, 192) and len(ids) == 8
    assert sorted(table["cell_id"]) == sorted(ids.tolist())


class _ThresholdNet:
    """Stand-in for a DPN-UNet: foreground logit = 3 × one normalised input channel."""

    def __new__(cls, channel: int):
        import torch
        from torch import nn

        class Net(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                v = x[:, channel : channel + 1]
                return torch.cat([-3 * v, torch.full_like(v, -4.0), 3 * v], dim=1)

        return Net()


@pytest.mark.parametrize("preset", ["hpacellseg", "pfcell-2021", "fast"])
def test_worker_pool_and_batches_give_the_same_masks(tmp_path, preset):
    images = Store(tmp_path / "images")
    for i in range(3):
        write_field(images, f"f{i}", _grid_field(2, 128, seed=i))
    options = {
        "nuclei_model": _ThresholdNet(2),
        "cell_model": _ThresholdNet(0),
        "preset": preset,
        "label_scale": 0.5,
        "device": "cpu",
    }
    masks = {}
    for workers, batch_size in ((1, 1), (2, 2)):
        out = tmp_path / f"masks-{workers}"
        summary = segment_set(
            images, out, method="hpa-unet", workers=workers, batch_size=batch_size,
            method_options=options, progress=False,
        )  # fmt: skip
        assert summary.done == 3
        masks[workers] = [read_mask(Store(out), f"f{i}") for i in range(3)]
    for one, pooled in zip(masks[1], masks[2], strict=True):
        assert one.shape == (256, 256) and one.max() == 4
        assert np.array_equal(one, pooled)


def test_cli_preset_is_an_hpa_unet_option(cli, hpa_real, tmp_path):
    images = hpa_real / "kaggle-train/images"
    result = cli("segment", images, tmp_path / "m", "--preset", "pfcell-2021")
    assert result.returncode == 2 and "--preset" in result.stderr
    assert "only for --method hpa-unet" in result.stderr


def test_dry_run_plan_shows_the_segmentation_preset(cli):
    from pathlib import Path

    recipe = Path(__file__).parents[1] / "configs/recipes/pfcell-2021.yaml"
    plan = cli("run", recipe, "--dry-run", check=True).stdout.splitlines()
    # Each step line is followed by a line of its settings.
    settings = {
        line.split("]", 1)[1].split()[0]: plan[i + 1]
        for i, line in enumerate(plan)
        if "(segment)" in line
    }
    for step, scale in (("masks-train-1536", 1.0), ("masks-public-1536", 1.0), ("masks-test", 0.5)):
        assert "method=hpa-unet, preset=pfcell-2021" in settings[step]
        assert f"method_options.label_scale={scale}" in settings[step]
