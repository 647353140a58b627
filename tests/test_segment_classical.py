"""The weight-free segmenter: synthetic ground truth, the shipped HPA mask, sizes, > 255 cells."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from hpasc.segment import SEGMENTERS, get_segmenter
from hpasc.segment.classical import ClassicalParams, segment_classical
from hpasc.segment.evaluate import match_counts, match_f1

REAL = Path(__file__).parents[2] / "shared/data/hpa-real"
KAGGLE_ID = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"


def _read_rgby(folder: Path, field_id: str) -> np.ndarray:
    channels = [
        cv2.imread(str(folder / f"{field_id}_{c}.png"), cv2.IMREAD_UNCHANGED)
        for c in ("red", "green", "blue", "yellow")
    ]
    return np.dstack(channels)


def _disk_field(n_rows: int, n_cols: int, pitch: int) -> tuple[np.ndarray, np.ndarray]:
    """Round cells (red) with round nuclei (blue) on a grid, and their true mask."""
    h, w = n_rows * pitch, n_cols * pitch
    yy, xx = np.mgrid[:h, :w]
    cy = (yy // pitch) * pitch + pitch // 2
    cx = (xx // pitch) * pitch + pitch // 2
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    cell = r2 < (0.42 * pitch) ** 2
    nucleus = r2 < (0.2 * pitch) ** 2
    image = np.zeros((h, w, 4), np.uint8)
    image[..., 0] = np.where(cell, 150, 3)
    image[..., 2] = np.where(nucleus, 200, 2)
    image[..., 3] = np.where(cell, 90, 2)
    truth = np.where(cell, (yy // pitch) * n_cols + xx // pitch + 1, 0).astype(np.int32)
    return image, truth


def test_registry_names_and_options():
    assert set(SEGMENTERS) == {"classical", "hpa-unet", "cellpose"}
    segmenter = get_segmenter("classical", cell_threshold=0.4, working_size=256)
    assert segmenter.params.cell_threshold == 0.4 and segmenter.working_size == 256
    with pytest.raises(ValueError, match="unknown"):
        get_segmenter("classical", no_such_constant=1.0)
    with pytest.raises(ValueError, match="unknown segmenter"):
        get_segmenter("watershed")


@pytest.mark.parametrize("size", [512, 1024])
def test_recovers_synthetic_ground_truth(size, report_metric):
    from hpasc.synth import make_field

    matched = n_pred = n_true = 0
    per_field = []
    for seed in range(4):
        field = make_field(np.random.default_rng(seed), size)
        cells = get_segmenter("classical").segment(field.image).cells
        m, p, t = match_counts(cells, field.mask)
        matched, n_pred, n_true = matched + m, n_pred + p, n_true + t
        per_field.append(round(2 * m / (p + t), 3))
    f1 = 2 * matched / (n_pred + n_true)
    report = f"classical on synth {size} px, seeds 0-3: F1 {f1:.3f} (per field {per_field})"
    report_metric(report)
    assert f1 >= 0.9, report


def _real_fields() -> list[tuple[str, Path]]:
    """(field id, folder) of every shared real field with an HPA-Cell-Segmentation mask."""
    return [
        (mask.stem, REAL / sub)
        for sub in ("kaggle-train", "kaggle-train-more")
        for mask in sorted((REAL / sub / "masks").glob("*.png"))
    ]


def test_real_fields_match_hpa_masks(report_metric):
    """All three real fields together (8 + 19 + 10 cells), none of them alone."""
    fields = _real_fields()
    assert len(fields) == 3
    matched = n_pred = n_true = 0
    per_field = []
    for field_id, folder in fields:
        image = _read_rgby(folder / "images", field_id)
        truth = cv2.imread(str(folder / f"masks/{field_id}.png"), cv2.IMREAD_UNCHANGED)
        result = get_segmenter("classical").segment(image)
        m, p, t = match_counts(result.cells, truth, iou=0.6)
        matched, n_pred, n_true = matched + m, n_pred + p, n_true + t
        per_field.append(f"{field_id[:8]} {m}/{t} ({p} found)")
        assert 2 * m / (p + t) >= 0.9, per_field[-1]
        assert result.cells.shape == truth.shape and result.cells.dtype == np.uint16
        # Nucleus k lies inside cell k.
        inside = result.nuclei > 0
        assert inside.any() and np.array_equal(result.nuclei[inside], result.cells[inside])
    f1 = 2 * matched / (n_pred + n_true)
    report = f"classical vs HPA masks, 3 real fields: F1 {f1:.3f} ({', '.join(per_field)})"
    report_metric(report)
    assert n_true == 37
    assert f1 >= 0.95, report


def test_touching_nuclei_of_different_brightness_stay_apart():
    # A dim round nucleus and a bright one overlapping it by a wide neck: the shape alone would
    # merge them, their contrast (x 3) keeps them apart.
    image = np.zeros((512, 512, 4), np.uint8)
    yy, xx = np.mgrid[:512, :512]
    image[..., 0] = 60
    dim = (yy - 256) ** 2 + (xx - 200) ** 2 < 60**2
    bright = (yy - 256) ** 2 + (xx - 300) ** 2 < 55**2
    image[..., 2] = np.where(bright, 240, np.where(dim, 80, 0))
    result = segment_classical(image, input_scale=1.0)
    assert result.n_cells == 2
    merged = segment_classical(image, input_scale=1.0, params=ClassicalParams(nucleus_contrast=1e9))
    assert merged.n_cells == 1


def test_output_at_input_size_for_any_shape_and_dtype():
    image, _ = _disk_field(3, 5, 160)  # 480 x 800, not square
    for arr in (image, image.astype(np.uint16) * 257):
        result = segment_classical(arr, input_scale=0.5)
        assert result.cells.shape == (480, 800) and result.nuclei.shape == (480, 800)
        assert result.n_cells == 15


def test_working_size_changes_resolution_not_result():
    image, truth = _disk_field(4, 4, 256)  # 1024 px, cells of ~108 px radius
    for working_size in (256, 512, 1024):
        cells = segment_classical(image, working_size=working_size, input_scale=1.0).cells
        assert match_f1(cells, truth)[0] == 1.0, working_size


def test_more_than_255_cells():
    image, truth = _disk_field(17, 17, 60)  # 289 cells
    result = segment_classical(image, working_size=image.shape[0], input_scale=0.5)
    assert result.cells.dtype == np.uint16
    assert result.n_cells == 289
    assert match_f1(result.cells, truth)[0] == 1.0


def test_size_constants_scale_with_resolution():
    image, _ = _disk_field(2, 2, 256)
    # Cells of ~40,000 px survive the 5,500-px minimum at scale 1, not a minimum above their size.
    cells = segment_classical(image, input_scale=1.0, working_size=512).cells
    assert cells.max() == 4
    largest = np.bincount(cells.ravel())[1:].max()
    assert 30_000 < largest < 60_000
    big = ClassicalParams(cell_min_area=largest + 1.0)
    assert segment_classical(image, input_scale=1.0, working_size=512, params=big).n_cells == 0
    # Read as a 4x-downsized field (scale 0.25 -> 16x smaller minimum areas) it still works.
    small = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
    assert segment_classical(small, input_scale=0.25, working_size=128).n_cells == 4


def test_empty_field_gives_empty_masks():
    result = segment_classical(np.zeros((64, 64, 4), np.uint8))
    assert result.n_cells == 0 and not result.nuclei.any()


def test_rejects_bad_images():
    with pytest.raises(ValueError, match="RGBY"):
        segment_classical(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        segment_classical(np.zeros((8, 8, 4), np.float32))
