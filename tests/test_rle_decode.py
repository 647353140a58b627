"""Mask strings → run lists: equal to pycocotools' decoding, and every malformed input refused."""

import base64
import zlib

import numpy as np
import pytest

from hpasc.rle import (
    MaskStringError,
    decode_mask_string,
    decode_mask_strings,
    encode_binary_mask,
    encode_instance_mask,
    mask_string_runs,
)


def dense(runs, k, h, w):
    flat = np.zeros(h * w, bool)
    for a, b in zip(runs.starts[runs.owner == k], runs.ends[runs.owner == k], strict=True):
        flat[a:b] = True
    return flat.reshape(w, h).T


def test_runs_equal_pycocotools_decoding_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        labels = rng.integers(0, int(rng.integers(2, 300)), (h, w))  # > 255 labels too
        strings = encode_instance_mask(labels)
        texts = list(strings.values()) + [encode_binary_mask(np.zeros((h, w), bool))]
        runs = decode_mask_strings(texts, h, w)
        assert runs.count == len(texts)
        for k, text in enumerate(texts):
            np.testing.assert_array_equal(dense(runs, k, h, w), decode_mask_string(text, h, w))
        np.testing.assert_array_equal(
            runs.areas(), [decode_mask_string(t, h, w).sum() for t in texts]
        )
        assert np.all(np.diff(runs.owner) >= 0) and np.all(runs.ends > runs.starts)


def test_large_field_runs():
    h, w = 2048, 1728
    mask = np.zeros((h, w), np.uint16)
    mask[100:1900, 5:1700] = 1
    mask[0:2048, 1700:1728] = 2
    starts, ends = mask_string_runs(encode_binary_mask(mask == 1), h, w)
    assert int((ends - starts).sum()) == 1800 * 1695
    assert starts[0] == 5 * h + 100


def counts_string(chars: bytes) -> str:
    return base64.b64encode(zlib.compress(chars)).decode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("notbase64!", "not base64"),
        (base64.b64encode(b"plain").decode(), "decompressing"),
        (counts_string(b""), "empty"),
        (counts_string(b"3!"), "character outside"),
        (counts_string(b"4o"), "middle of a number"),
        (counts_string(b"1O"), "negative run"),  # 'O' is -1
        (counts_string(b"o" * 12 + b"0"), "huge number"),
        (counts_string(b"3"), "do not add up to 2x2"),  # 3 pixels for a 2x2 mask
    ],
)
def test_malformed_strings_are_refused_with_their_index(text, reason):
    good = encode_binary_mask(np.ones((2, 2), bool))
    with pytest.raises(MaskStringError, match=reason) as info:
        decode_mask_strings([good, good, text], 2, 2)
    assert info.value.index == 2
    with pytest.raises(ValueError, match=reason):
        mask_string_runs(text, 2, 2)


def test_no_strings():
    runs = decode_mask_strings([], 3, 3)
    assert runs.count == 0 and runs.starts.size == 0
