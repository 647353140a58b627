"""Open Images / Kaggle mask strings: base64(zlib(COCO compressed RLE counts)).

:func:`encode_instance_mask` encodes *every* cell of an instance mask in one pass over the pixels
(column-major run lengths for all labels at once), byte-identical to encoding each binary mask
separately with pycocotools — the reference compared the full mask against every cell id.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

_MAX_GROUPS = 13  # 5 bits per char: enough for any int64 delta


def _label_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Column-major runs of non-zero labels: (labels, starts, ends), sorted by label then start."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask).ravel(order="F")
    n = flat.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, 0
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    ends = np.concatenate((change, [n])).astype(np.int64)
    values = flat[starts]
    keep = values != 0
    starts, ends, values = starts[keep], ends[keep], values[keep]
    order = np.argsort(values, kind="stable")  # runs of one label stay in pixel order
    return values[order].astype(np.int64), starts[order], ends[order], n


def _encode_counts(x: np.ndarray) -> np.ndarray:
    """COCO's LEB128-like string coding of already delta-coded counts, vectorised.

    Returns a (len(x), _MAX_GROUPS) uint8 array of characters, 0 where unused.
    """
    out = np.zeros((x.size, _MAX_GROUPS), dtype=np.uint8)
    x = x.astype(np.int64).copy()
    active = np.ones(x.size, dtype=bool)
    for g in range(_MAX_GROUPS):
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, as in C for signed longs
        more = np.where((c & 0x10) != 0, x != -1, x != 0)
        c = np.where(more, c | 0x20, c) + 48
        out[:, g] = np.where(active, c, 0)
        active &= more
        if not active.any():
            break
    return out


def encode_instance_mask(mask: np.ndarray) -> dict[int, str]:
    """Mask string for every cell of an instance mask (0 = background).

    Parameters
    ----------
    mask : (H, W) integer array of cell labels.

    Returns
    -------
    dict mapping each label present to base64(zlib level 9(COCO RLE counts)) as ASCII.

    Examples
    --------
    >>> m = np.zeros((4, 4), np.uint16); m[1:3, 1:3] = 7
    >>> list(encode_instance_mask(m))
    [7]
    """
    labels, starts, ends, n = _label_runs(mask)
    if labels.size == 0:
        return {}
    # Per label, counts = [s0, e0-s0, s1-e0, e1-s1, ..., n-e_last (if > 0)].
    first = np.r_[True, labels[1:] != labels[:-1]]
    last = np.r_[labels[1:] != labels[:-1], True]
    prev_end = np.r_[0, ends[:-1]]
    gaps = np.where(first, starts, starts - prev_end)
    lengths = ends - starts
    tails = n - ends[last]
    # Interleave gap/length per run, then append each label's tail zero-run where non-empty.
    per_run = np.stack([gaps, lengths], axis=1).ravel()
    run_label_start = np.flatnonzero(first)
    run_counts = np.diff(np.r_[run_label_start, labels.size])
    ulabels = labels[first]
    pieces_idx = np.cumsum(np.r_[0, 2 * run_counts])  # where each label's run counts start
    counts_list = []
    offsets = [0]
    for i in range(ulabels.size):
        c = per_run[pieces_idx[i] : pieces_idx[i + 1]]
        if tails[i] > 0:
            c = np.r_[c, tails[i]]
        counts_list.append(c)
        offsets.append(offsets[-1] + c.size)
    counts = np.concatenate(counts_list)
    offsets = np.asarray(offsets)
    # Delta coding: x_i -= x_{i-2} for i > 2 within each label's counts.
    pos = np.arange(counts.size) - np.repeat(offsets[:-1], np.diff(offsets))
    delta = counts.copy()
    use = pos > 2
    delta[use] = counts[use] - counts[np.flatnonzero(use) - 2]
    chars = _encode_counts(delta)
    nchar = (chars != 0).sum(axis=1)
    flat_chars = chars[chars != 0].tobytes()  # row-major: chars of count 0, then 1, ...
    char_off = np.r_[0, np.cumsum(nchar)][offsets]
    result: dict[int, str] = {}
    for i, lab in enumerate(ulabels.tolist()):
        rle = flat_chars[char_off[i] : char_off[i + 1]]
        result[int(lab)] = base64.b64encode(zlib.compress(rle, zlib.Z_BEST_COMPRESSION)).decode(
            "ascii"
        )
    return result


def encode_binary_mask(mask: np.ndarray) -> str:
    """Mask string of one binary mask (an all-zero mask encodes as a single zero run)."""
    m = np.asarray(mask).astype(bool)
    enc = encode_instance_mask(m.astype(np.uint8))
    if 1 in enc:
        return enc[1]
    return encode_empty(m.shape[0], m.shape[1])


def encode_empty(height: int, width: int) -> str:
    chars = _encode_counts(np.array([height * width]))
    rle = chars[chars != 0].tobytes()
    return base64.b64encode(zlib.compress(rle, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def decode_rle_counts(text: str) -> bytes:
    """base64 → zlib → COCO compressed counts bytes."""
    return zlib.decompress(base64.b64decode(text))


def decode_mask_string(text: str, height: int, width: int) -> np.ndarray:
    """Mask string → (height, width) bool array."""
    from pycocotools import mask as mask_util

    rle = {"size": [int(height), int(width)], "counts": decode_rle_counts(text)}
    return mask_util.decode(rle).astype(bool)


_MAX_DECODE_GROUPS = 12  # 60 bits: far beyond any image size, and no shift overflows int64


def decode_counts(data: bytes) -> np.ndarray:
    """COCO compressed counts bytes → run lengths (int64), alternating background/foreground.

    Validates what pycocotools does not (it would read past its buffers): characters in range,
    no truncated number, no negative run.

    Raises
    ------
    ValueError
        Malformed counts, with the reason.
    """
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("RLE counts hold a character outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end in the middle of a number")
    last = np.flatnonzero(~more)  # last character of each number
    first = np.r_[0, last[:-1] + 1]
    number = np.repeat(np.arange(last.size), last - first + 1)
    group = np.arange(c.size) - first[number]
    if group.max() >= _MAX_DECODE_GROUPS:
        raise ValueError("RLE counts hold a number too large for any image")
    x = np.add.reduceat((c & 0x1F) << (5 * group), first)
    negative = (c[last] & 0x10) != 0  # sign bit of the last group
    x = np.where(negative, x | (-1 << (5 * (last - first + 1))), x)
    # Undo the delta coding x_i -= x_{i-2} (i > 2): cumulative sums over odd and even positions.
    counts = x.copy()
    counts[1::2] = np.cumsum(x[1::2])
    counts[2::2] = np.cumsum(x[2::2])
    if (counts < 0).any():
        raise ValueError("RLE counts hold a negative run length")
    return counts


def mask_string_runs(text: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask string → foreground runs (starts, ends) in column-major pixel order, validated.

    Runs are sorted, disjoint and non-empty; ``(ends - starts).sum()`` is the mask area.

    Raises
    ------
    ValueError
        Not base64/zlib/COCO counts, or counts that do not add up to ``height * width``.
    """
    try:
        data = decode_rle_counts(text)
    except (ValueError, zlib.error) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"not base64(zlib(RLE)): {exc}") from exc
    counts = decode_counts(data)
    total = int(counts.sum())
    if total != height * width:
        raise ValueError(f"mask covers {total} pixels, not {height}x{width} = {height * width}")
    bounds = np.cumsum(counts)
    starts, ends = bounds[0:-1:2], bounds[1::2]
    keep = ends > starts
    return starts[keep], ends[keep]
