import base64
import zlib

import numpy as np
import pytest
from pycocotools import _mask as coco_mask

from hpasc.rle import decode_mask_string, encode_binary_mask, encode_empty, encode_instance_mask


def reference_encode(binary: np.ndarray) -> str:
    """The per-cell path of the reference: pycocotools encode, zlib level 9, base64."""
    rle = coco_mask.encode(np.asfortranarray(binary[..., None].astype(np.uint8)))[0]["counts"]
    return base64.b64encode(zlib.compress(rle, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def random_instance_mask(rng, h, w, n):
    mask = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, h), rng.integers(0, w)
        hh, ww = rng.integers(1, max(2, h // 3)), rng.integers(1, max(2, w // 3))
        mask[y : y + hh, x : x + ww] = k
    return mask


CASES = {
    "touching": lambda rng: np.repeat(np.arange(1, 9)[None], 16, axis=0).repeat(3, axis=1),
    "borders": lambda rng: np.pad(np.ones((5, 5), np.int32), 0),
    "one_pixel": lambda rng: np.eye(7, dtype=np.int32) * np.arange(1, 8),
    "empty": lambda rng: np.zeros((9, 11), np.int32),
    "many": lambda rng: random_instance_mask(rng, 120, 90, 400),
    "nonsquare": lambda rng: random_instance_mask(rng, 37, 151, 30),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_byte_identical_to_pycocotools(name):
    rng = np.random.default_rng(0)
    mask = CASES[name](rng)
    enc = encode_instance_mask(mask)
    labels = sorted(int(v) for v in np.unique(mask) if v)
    assert sorted(enc) == labels
    for lab in labels:
        assert enc[lab] == reference_encode(mask == lab), lab
        assert np.array_equal(decode_mask_string(enc[lab], *mask.shape), mask == lab)


def test_over_255_labels_uint16():
    rng = np.random.default_rng(1)
    mask = np.arange(1, 1001, dtype=np.uint16).reshape(25, 40)
    mask[rng.random(mask.shape) < 0.2] = 0
    enc = encode_instance_mask(mask)
    assert len(enc) == np.count_nonzero(np.unique(mask))
    for lab in list(enc)[::97]:
        assert enc[lab] == reference_encode(mask == lab)


def test_binary_and_empty():
    m = np.zeros((6, 4), bool)
    assert encode_binary_mask(m) == reference_encode(m) == encode_empty(6, 4)
    m[0, 0] = m[5, 3] = True
    assert encode_binary_mask(m) == reference_encode(m)


def test_large_values_encode():
    # long runs exercise multi-group characters and negative deltas
    m = np.zeros((2048, 2048), np.uint16)
    m[:1500, :3] = 1
    m[2000:, 1000:1002] = 2
    enc = encode_instance_mask(m)
    assert enc[1] == reference_encode(m == 1)
    assert enc[2] == reference_encode(m == 2)


def test_run_facts_match_pixel_counts_and_border_contact():
    from hpasc.rle import label_runs, run_facts

    rng = np.random.default_rng(3)
    for h, w in [(7, 5), (1, 6), (6, 1), (9, 9)]:
        # few labels in blocks: runs cross column ends (bottom of x, top of x+1)
        mask = rng.integers(0, 4, (h, w)).astype(np.uint16) * (rng.random((h, w)) < 0.7)
        mask[1:-1, 1:-1][rng.random((max(h - 2, 0), max(w - 2, 0))) < 0.3] = 9  # interior-ish
        ids, areas, touches = run_facts(label_runs(mask))
        want = np.unique(mask[mask > 0])
        assert ids.tolist() == want.tolist()
        assert areas.tolist() == [int((mask == k).sum()) for k in want]
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert touches.tolist() == [bool((border == k).any()) for k in want]
    # a label only in the interior, reached by a run that wraps from one column to the next
    m = np.zeros((4, 4), np.uint16)
    m[2:4, 1] = 5
    m[0, 2] = 5  # top row
    m[1:3, 2] = 6  # interior only
    ids, areas, touches = run_facts(label_runs(m))
    assert dict(zip(ids.tolist(), touches.tolist(), strict=True)) == {5: True, 6: False}
