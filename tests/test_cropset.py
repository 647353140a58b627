"""Crop-set records (hpasc.io.cropset): round trip, random access, empty fields, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from hpasc.errors import HpascError
from hpasc.io import cropset
from hpasc.io.images import write_field, write_mask
from hpasc.io.store import Store
from hpasc.prepare import _TABLE_DTYPE, crop_set, read_crops

SEED = Path(__file__).resolve().parents[1] / ".." / "shared" / "vectors" / "seed"


def _crops(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, side, side), dtype=np.uint8)


@pytest.mark.parametrize("where", ["folder", "x.zip/sub"])
def test_round_trip_and_random_access(tmp_path, where):
    crops, ids = _crops(4), np.array([3, 7, 8, 20])
    table = np.zeros(4, _TABLE_DTYPE)
    table["cell_id"] = ids
    table["area"] = [10, 20, 30, 40]
    with Store(tmp_path / where) as store:
        cropset.write_record(store, "f", crops, ids, table)
        cropset.write_record(store, "empty", crops[:0], np.zeros(0), table[:0])
    store = Store(tmp_path / where)
    rec = cropset.read_record(store, "f")
    np.testing.assert_array_equal(rec.crops, crops)
    assert rec.cell_ids.dtype == np.int32 and rec.cell_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(rec.cells, table)
    np.testing.assert_array_equal(cropset.read_table(store, "f"), table)
    assert cropset.read_cell_ids(store, "f").tolist() == ids.tolist()
    assert cropset.list_ids(store) == ["empty", "f"]

    # one cell, by id, through a reader that survives pickling (DataLoader workers)
    reader = pickle.loads(pickle.dumps(cropset.CropReader([str(tmp_path / where)])))
    for k in (20, 3, 8):
        np.testing.assert_array_equal(reader.read_cell(0, "f", k), crops[ids.tolist().index(k)])
    with pytest.raises(HpascError, match="no cell 5"):
        reader.read_cell(0, "f", 5)

    # a field without cells is a valid, empty record that keeps the crop shape
    empty = cropset.read_record(store, "empty")
    assert empty.crops.shape == (0, 8, 16, 16) and empty.cell_ids.size == 0
    assert empty.cells is not None and len(empty.cells) == 0
    assert cropset.read_index(store, "empty").shape == (8, 16, 16)


def test_records_are_deterministic_and_smaller_than_raw():
    crops = np.zeros((5, 8, 64, 64), np.uint8)
    crops[:, :, 16:48, 16:48] = _crops(5, 32)  # cells: signal in the middle, zeros around
    a, b = (
        cropset.encode_record(crops, np.arange(1, 6)),
        cropset.encode_record(crops, np.arange(1, 6)),
    )
    assert a == b
    assert len(a) < crops.nbytes / 2


def test_bad_input_and_corrupt_records(tmp_path):
    with pytest.raises(ValueError, match="ascending"):
        cropset.encode_record(_crops(2), np.array([4, 2]))
    with pytest.raises(ValueError, match="uint8"):
        cropset.encode_record(_crops(2).astype(np.int16), np.array([1, 2]))
    store = Store(tmp_path)
    data = cropset.encode_record(_crops(2), np.array([1, 2]))
    store.write_bytes("trunc.crops", data[:-10])
    store.write_bytes("junk.crops", b"not a record at all")
    with pytest.raises(
        HpascError, match=r"corrupt crop record .*trunc\.crops.*re-run `hpasc crop`"
    ):
        cropset.read_record(store, "trunc")
    with pytest.raises(HpascError, match="not an hpasc crop record"):
        cropset.read_record(store, "junk")
    store.write_bytes("old.npz", b"x")
    with pytest.raises(HpascError, match=r"older hpasc.*--overwrite"):
        cropset.read_record(store, "old")


def test_crop_set_of_reference_field_equals_the_original_crops(tmp_path):
    """The original's 8-plane crops of the real field at 768 survive the record byte for byte."""
    vec = np.load(SEED / "crops-5c27f04c.npz")
    write_field(Store(tmp_path / "img"), "f", vec["rgby_768"].transpose(1, 2, 0))
    write_mask(Store(tmp_path / "mask"), "f", vec["mask_768"].astype(np.uint16))
    crop_set(
        tmp_path / "img",
        tmp_path / "mask",
        tmp_path / "crops",
        size=int(vec["image_size"]),
        progress=False,
    )
    crops, ids = read_crops(tmp_path / "crops", "f")
    assert ids.tolist() == vec["instance_indices"].tolist()
    assert crops.tobytes() == vec["cell_images"].tobytes()
    reader = cropset.CropReader([str(tmp_path / "crops")])
    assert reader.read_cell(0, "f", 5).tobytes() == vec["cell_images"][4].tobytes()
