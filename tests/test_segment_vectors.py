"""hpa-unet presets against the reference vectors (``shared/vectors/hpa-seg``), stage by stage.

The vectors were made by running HPA-Cell-Segmentation and the 7th-place code with stand-in
networks that record their input and return stored logits (``shared/vectors/README.md``). Here
the same stand-ins go into hpasc's segmenter, so every stage is compared on the reference's own
data: network inputs, restored maps, ``label_cell`` labels and the final mask.

Tolerance: integer outputs (maps, labels, masks) must be equal. The float32 network inputs are
equal here to the bit (same float64 scikit-image resampling, float32 subtract-then-divide like
torch's ``sub_``/``div_``); the tests allow 1e-5 (about 1/1700 of a grey level after the ×4.26
normalisation) so that another scipy build's last-bit differences in the float64 Gaussian do not
fail them, while any change of method (cv2 area resampling differs by ~0.4 grey levels, a
different normalisation mean by ~0.1) is caught.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import nn

from hpasc.segment.base import resize_labels
from hpasc.segment.hpa_unet import HpaUnetSegmenter, run_network
from hpasc.segment.label_cell import label_cell, label_cell_at_shape, label_nuclei
from hpasc.segment.presets import Box, get_preset

SHARED = Path(__file__).parents[2] / "shared"
VECTORS = SHARED / "vectors/hpa-seg"
FIELDS = {
    "5c27f04c": SHARED / "data/hpa-real/kaggle-train/images/5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0",
    "57_F11_1": SHARED / "data/hpa-real/public-hpa/images/57_F11_1",
    "synth3072": SHARED / "vectors/inputs/synth3072/synth-3-00000",
}
#: Allowed deviation of float32 network inputs (see the module docstring).
INPUT_ATOL = 1e-5
CPU = torch.device("cpu")
# The 3072-px field costs several seconds per stage.
FIELD_PARAMS = [
    "5c27f04c",
    "57_F11_1",
    pytest.param("synth3072", marks=pytest.mark.slow),
]


def _vector(name: str) -> dict[str, np.ndarray]:
    with np.load(VECTORS / f"{name}.npz") as data:
        return dict(data)


def _field(name: str) -> np.ndarray:
    prefix = FIELDS[name]
    channels = ("red", "green", "blue", "yellow")
    return np.dstack([iio.imread(f"{prefix}_{c}.png") for c in channels])


class StoredLogits(nn.Module):
    """Stand-in network: records each input batch, returns the stored logits for every field."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.from_numpy(logits.astype(np.float32))
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.extend(x.numpy().copy())
        return self.logits.expand(x.shape[0], *self.logits.shape).clone()


def _softmax(logits: np.ndarray) -> np.ndarray:
    """The segmenter's softmax of stored logits (its own network call on a stand-in)."""
    dummy = np.zeros((3, *logits.shape[1:]), np.float32)
    return run_network(StoredLogits(logits), [dummy], 1, CPU)[0]


def _box(v: dict[str, np.ndarray]) -> Box:
    (r0, r1), (c0, c1) = v["crop_rows"], v["crop_cols"]
    return Box(int(r0), int(c0), int(r1 - r0), int(c1 - c0))


def _assert_close(mine: np.ndarray, reference: np.ndarray) -> None:
    assert mine.shape == reference.shape and mine.dtype == reference.dtype
    np.testing.assert_allclose(mine, reference, rtol=0, atol=INPUT_ATOL)


# ------------------------------------------------------------------ stage 1: network inputs


@pytest.mark.parametrize("field", FIELD_PARAMS)
def test_hpacellseg_network_inputs_equal_cellsegmentator(field):
    v = _vector(f"preprocess-hpacellseg-{field}")
    nuclei_x, cell_x, box = get_preset("hpacellseg").prepare(_field(field), two_channel=False)
    _assert_close(cell_x, v["cell_input"])
    _assert_close(nuclei_x, v["nuclei_input"])
    # The 1728-px field is padded as upstream's padding=True (432 -> 480), the others not.
    assert box == _box(v)
    assert bool(v["padding"]) == (box.top > 0)


@pytest.mark.parametrize("field", FIELD_PARAMS)
def test_pfcell_network_inputs_equal_the_7th_place_worker(field):
    v = _vector(f"preprocess-seed-{field}")
    nuclei_x, cell_x, box = get_preset("pfcell-2021").prepare(_field(field), two_channel=False)
    _assert_close(cell_x, v["cell_input"])
    # Three copies of the normalised blue plane: blue's mean on every copy.
    _assert_close(nuclei_x, v["cell_input"][[2, 2, 2]])
    assert box == Box(0, 0, 512, 512)


def test_nucleus_inputs_of_the_two_presets_differ_as_their_references_do():
    image = _field("5c27f04c")
    hpa_nuclei, _, _ = get_preset("hpacellseg").prepare(image, two_channel=False)
    seed_nuclei, _, _ = get_preset("pfcell-2021").prepare(image, two_channel=False)
    assert np.array_equal(hpa_nuclei[2], seed_nuclei[2])
    # (104 - 124) / 255 / std: CellSegmentator's red-mean copy sits 0.33 below the seed's.
    assert np.allclose(hpa_nuclei[0] - seed_nuclei[0], -20 / 255 * 0.0167 * 255, atol=1e-5)


# ------------------------------------------------------------------ stage 2: restored maps


@pytest.mark.parametrize("field", FIELD_PARAMS)
def test_hpacellseg_restored_maps_equal_cellsegmentator(field):
    v = _vector(f"restore-hpacellseg-{field}")
    nuclei_p, cell_p = _softmax(v["nuclei_logits"]), _softmax(v["cell_logits"])
    if "nuclei_softmax" in v:
        assert np.array_equal(nuclei_p, v["nuclei_softmax"])
        assert np.array_equal(cell_p, v["cell_softmax"])
    shape = tuple(int(n) for n in v["field_shape"])
    nuclei, cell, scale = get_preset("hpacellseg").restore(nuclei_p, cell_p, _box(v), shape)
    assert np.array_equal(nuclei, v["nuclei_map"]) and np.array_equal(cell, v["cell_map"])
    assert scale == 1.0  # upstream labels the field-resolution maps with its own constants


@pytest.mark.parametrize(("scale", "tag"), [(1.0, "s1"), (0.5, "s05")])
def test_pfcell_restored_maps_equal_the_7th_place_worker(scale, tag):
    v = _vector("restore-seed")
    nuclei_p, cell_p = _softmax(v["nuclei_logits"]), _softmax(v["cell_logits"])
    assert np.array_equal(nuclei_p, v["nuclei_softmax"])
    preset = get_preset("pfcell-2021", label_scale=scale)
    # Every field was shrunk to 512 px, so the maps do not depend on the field's size.
    for shape in ((2048, 2048), (1728, 1728), (3072, 3072)):
        nuclei, cell, s = preset.restore(nuclei_p, cell_p, Box(0, 0, 512, 512), shape)
        assert np.array_equal(nuclei, v[f"nuclei_map_{tag}"]), shape
        assert np.array_equal(cell, v[f"cell_map_{tag}"]), shape
        assert s == scale


# ------------------------------------------------------------------ stage 3: label_cell


def _maps(v: dict[str, np.ndarray], side: int) -> tuple[np.ndarray, np.ndarray]:
    return v[f"nuclei_map_{side}"], v[f"cell_map_{side}"]


def _field_side(v: dict[str, np.ndarray]) -> int:
    return int(v["field_shape"][0])


@pytest.mark.parametrize("case", ["5c27f04c", "57_F11_1", "sizerule"])
def test_label_cell_equals_hpacellseg(case):
    v = _vector(f"label-cell-{case}")
    nuclei, cells = label_cell(*_maps(v, _field_side(v)), scale=1.0)
    assert cells.dtype == v["hpacellseg_cell_label"].dtype
    assert np.array_equal(cells, v["hpacellseg_cell_label"])
    assert np.array_equal(nuclei, v["hpacellseg_nuclei_label"])


@pytest.mark.parametrize("case", ["5c27f04c", "57_F11_1", "grid400", "sizerule"])
def test_label_nuclei_equals_hpacellseg(case):
    v = _vector(f"label-cell-{case}")
    labels = label_nuclei(_maps(v, _field_side(v))[0])
    assert labels.dtype == v["hpacellseg_label_nuclei"].dtype
    assert np.array_equal(labels, v["hpacellseg_label_nuclei"])


@pytest.mark.parametrize("case", ["5c27f04c", "57_F11_1", "sizerule"])
@pytest.mark.parametrize(("scale", "side", "tag"), [(1.0, 2048, "s1"), (0.5, 1024, "s05")])
def test_label_cell_equals_the_7th_place_at_both_scales(case, scale, side, tag):
    v = _vector(f"label-cell-{case}")
    nuclei, cells = label_cell(*_maps(v, side), scale=scale)
    assert np.array_equal(cells, v[f"seed_{tag}_cell_label"])
    assert np.array_equal(nuclei, v[f"seed_{tag}_nuclei_label"])
    # The mask it writes: labels resized to the field, nearest (INTER_NEAREST_EXACT).
    shape = tuple(int(n) for n in v["field_shape"])
    assert not v[f"seed_{tag}_postprocess_assert_failed"]
    mask = resize_labels(cells, shape)
    assert np.array_equal(mask, v[f"seed_{tag}_cell_mask"].astype(mask.dtype))


def test_size_thresholds_follow_the_pre_026_rule():
    """Objects of exactly the minimum size stay, one pixel less goes (not 0.26's <= rule)."""
    v = _vector("label-cell-sizerule")
    _, cells = label_cell(*_maps(v, 2048), scale=1.0)
    side = 2048 // 6
    slot_label = [
        int(np.bincount(cells[r : r + side, c : c + side].ravel(), minlength=2)[1:].argmax() + 1)
        if cells[r : r + side, c : c + side].any()
        else 0
        for r, c in ((i // 6 * side, i % 6 * side) for i in range(10))
    ]
    # Slot 1: nucleus of 2499 px, slot 4: cell of 5499 px are removed; 2500 and 5500 stay.
    assert slot_label[0] and not slot_label[1] and slot_label[2]
    assert slot_label[3] and not slot_label[4] and slot_label[5]


@pytest.mark.parametrize(
    ("reference", "scale", "side"),
    [("hpacellseg", 1.0, 2048), ("seed_s1", 1.0, 2048), ("seed_s05", 0.5, 1024)],
)
def test_400_cells_keep_their_labels_and_the_legacy_flag_wraps_like_the_original(
    reference, scale, side
):
    v = _vector("label-cell-grid400")
    maps = _maps(v, side)
    nuclei, cells = label_cell(*maps, scale=scale)
    assert cells.max() == 400 and len(np.unique(cells)) == 401
    assert len(np.unique(nuclei)) == 401
    legacy_nuclei, legacy = label_cell(*maps, scale=scale, uint8_labels=True)
    key = "hpacellseg" if reference == "hpacellseg" else reference
    assert np.array_equal(legacy, v[f"{key}_cell_label"])
    assert np.array_equal(legacy_nuclei, v[f"{key}_nuclei_label"])
    assert legacy.max() == 399  # two grid cells share one label in the original


# ------------------------------------------------------------------ whole segmenter


@pytest.mark.parametrize("field", FIELD_PARAMS)
@pytest.mark.parametrize("preset", ["hpacellseg", "pfcell-2021"])
def test_segmenter_with_stand_in_networks_follows_every_stage(preset, field):
    """The segmenter's network inputs and masks equal the reference chain's."""
    if preset == "hpacellseg":
        pre = _vector(f"preprocess-hpacellseg-{field}")
        restored = _vector(f"restore-hpacellseg-{field}")
        expected_nuclei_x = pre["nuclei_input"]
        maps = restored["nuclei_map"], restored["cell_map"]
        scale = 1.0
    else:
        pre = _vector(f"preprocess-seed-{field}")
        restored = _vector("restore-seed")
        expected_nuclei_x = pre["cell_input"][[2, 2, 2]]
        maps = restored["nuclei_map_s05"], restored["cell_map_s05"]
        scale = 0.5
    nuclei_net = StoredLogits(restored["nuclei_logits"])
    cell_net = StoredLogits(restored["cell_logits"])
    segmenter = HpaUnetSegmenter(
        nuclei_net,
        cell_net,
        preset=preset,
        label_scale=None if scale == 1.0 else scale,
        device="cpu",
    )
    image = _field(field)
    result = segmenter.segment(image)
    _assert_close(nuclei_net.inputs[0], expected_nuclei_x)
    _assert_close(cell_net.inputs[0], pre["cell_input"])
    expected = label_cell_at_shape(*maps, image.shape[:2], scale)
    assert np.array_equal(result.cells, expected.cells)
    assert np.array_equal(result.nuclei, expected.nuclei)
    assert result.cells.shape == image.shape[:2]
