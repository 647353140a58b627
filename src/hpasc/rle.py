"""Open Images / Kaggle mask strings: base64(zlib(COCO compressed RLE counts)).

:func:`encode_instance_mask` encodes *every* cell of an instance mask in one pass over the pixels
(column-major run lengths for all labels at once), byte-identical to encoding each binary mask
separately with pycocotools — the reference compared the full mask against every cell id.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

_MAX_GROUPS = 13  # 5 bits per char: enough for any int64 delta
_CV_TRANSPOSABLE = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32))


class LabelRuns(NamedTuple):
    """Column-major runs of the non-zero labels of an (H, W) mask, sorted by label then start.

    ``starts``/``ends`` are flat column-major positions (``x * H + y``), ends exclusive.
    """

    labels: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    n: int
    height: int
    width: int


def label_runs(mask: np.ndarray) -> LabelRuns:
    """The :class:`LabelRuns` of an instance mask (one pass over the pixels)."""
    labels, starts, ends, n = _label_runs(mask)
    return LabelRuns(labels, starts, ends, n, *mask.shape)


def run_facts(runs: LabelRuns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels present (ascending), their areas (int64) and whether they touch the border.

    Computed from the runs alone: a run touches the top (bottom) row when it covers a position
    ``≡ 0`` (``≡ H-1``) modulo H, the left (right) column when it starts (ends) there.
    """
    labels, starts, ends, n, h, w = runs
    if labels.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    first = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    areas = np.add.reduceat(ends - starts, first)
    top = (starts + h - 1) // h * h < ends
    bottom = starts // h * h + h - 1 < ends
    edge = top | bottom | (starts < h) | (ends > (w - 1) * h)
    touches = np.logical_or.reduceat(edge, first)
    return labels[first], areas.astype(np.int64), touches


def _label_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Column-major runs of non-zero labels: (labels, starts, ends), sorted by label then start."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    mask = np.asarray(mask)
    if mask.size and mask.dtype in _CV_TRANSPOSABLE:
        flat = cv2.transpose(mask).ravel()  # blocked transpose: ~10x faster than ravel("F")
    else:
        flat = mask.ravel(order="F")
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
    return encode_runs(label_runs(mask))


def encode_runs(runs: LabelRuns) -> dict[int, str]:
    """:func:`encode_instance_mask` of a mask given by its :func:`label_runs`."""
    labels, starts, ends, n = runs.labels, runs.starts, runs.ends, runs.n
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
    rle = {"size": [int(height), int(width)], "counts": decode_rle_counts(text)}
    return mask_util.decode(rle).astype(bool)


# --------------------------------------------------------------------------- decoding to runs

_MAX_DECODE_GROUPS = 12  # 60 bits: far beyond any image size, and no shift overflows int64


class MaskStringError(ValueError):
    """A malformed mask string; ``index`` is its position in the list decoded."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index


class RunLists(NamedTuple):
    """Foreground runs of several masks, in column-major pixel order.

    ``starts``/``ends`` (int64, end exclusive) hold the runs of mask 0, then of mask 1, ...;
    ``owner`` is the mask index of each run (non-decreasing); ``count`` the number of masks.
    Within a mask, runs are sorted, disjoint and non-empty.
    """

    starts: np.ndarray
    ends: np.ndarray
    owner: np.ndarray
    count: int

    def areas(self) -> np.ndarray:
        """Pixels per mask (int64)."""
        out = np.zeros(self.count, dtype=np.int64)
        np.add.at(out, self.owner, self.ends - self.starts)
        return out


def _block_cumsum(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each block (blocks tile ``values``, all non-empty)."""
    total = np.cumsum(values)
    before = np.where(starts > 0, total[np.maximum(starts - 1, 0)], 0)
    return total - np.repeat(before, lengths)


def _fail(bad: np.ndarray, owner: np.ndarray, reason: str) -> None:
    if bad.any():
        raise MaskStringError(int(owner[np.argmax(bad)]), reason)


def decode_mask_strings(texts: Sequence[str], height: int, width: int) -> RunLists:
    """Decode mask strings to run lists in one vectorised pass, validating each.

    Checks what pycocotools does not (it would read past its buffers on bad input): base64 and
    zlib, characters of the COCO counts alphabet, no truncated number, no negative run, and runs
    that add up to ``height * width``.

    Raises
    ------
    MaskStringError
        For the first malformed string, with its index and the reason.
    """
    n = len(texts)
    raw = []
    for i, text in enumerate(texts):
        try:
            raw.append(decode_rle_counts(text))
        except (ValueError, zlib.error) as exc:  # binascii.Error is a ValueError
            raise MaskStringError(i, f"not base64(zlib(RLE)): {exc}") from None
    empty = np.zeros(0, dtype=np.int64)
    if n == 0:
        return RunLists(empty, empty, empty, 0)
    masks = np.arange(n)
    lengths = np.fromiter(map(len, raw), dtype=np.int64, count=n)
    _fail(lengths == 0, masks, "empty RLE counts")
    v = np.frombuffer(b"".join(raw), dtype=np.uint8)
    if v.min() < 48 or v.max() > 111:
        bad = (v < 48) | (v > 111)
        _fail(bad, np.repeat(masks, lengths), "RLE counts hold a character outside '0'..'o'")
    v = v - 48  # 0..63: five value bits, 0x10 = sign of a last group, 0x20 = more groups follow
    terminal = v < 32
    char_end = np.cumsum(lengths)
    _fail(~terminal[char_end - 1], masks, "RLE counts end in the middle of a number")

    # Numbers: x = sum of 5-bit groups, little end first, sign-extended from the last group.
    last = np.flatnonzero(terminal)
    first = np.r_[0, last[:-1] + 1]
    size = last - first + 1
    nums = np.diff(np.searchsorted(last, char_end, side="left"), prepend=0)  # numbers per mask
    longest = int(size.max())
    if longest > _MAX_DECODE_GROUPS:
        _fail(size > _MAX_DECODE_GROUPS, np.repeat(masks, nums), "RLE counts hold a huge number")
    low = (v & 31).astype(np.int64)
    x = low[first]
    for j in range(1, longest):  # most numbers have one or two groups
        sel = np.flatnonzero(size > j)
        x[sel] |= low[first[sel] + j] << (5 * j)
    negative = np.flatnonzero(v[last] & 16)
    x[negative] |= np.left_shift(-1, 5 * size[negative])

    # Lay each mask's numbers out from an even offset (zero-padded to even length) so that the
    # delta coding x_i -= x_{i-2} (i > 2) is undone by block cumsums over the two parities.
    padded = nums + (nums & 1)
    offset = np.cumsum(padded) - padded
    counts = np.zeros(int(padded.sum()), dtype=np.int64)
    counts[np.arange(x.size) + np.repeat(offset - (np.cumsum(nums) - nums), nums)] = x
    pair_start, pairs = offset // 2, padded // 2
    odd = _block_cumsum(counts[1::2], pair_start, pairs)
    even = counts[0::2].copy()
    head = even[pair_start].copy()  # position 0 is not part of a chain
    even[pair_start] = 0
    even = _block_cumsum(even, pair_start, pairs)
    even[pair_start] = head
    counts[0::2], counts[1::2] = even, odd
    counts[(offset + nums)[nums & 1 == 1]] = 0  # the padding
    _fail(counts < 0, np.repeat(masks, padded), "RLE counts hold a negative run length")
    bounds = _block_cumsum(counts, offset, padded)
    _fail(
        bounds[offset + padded - 1] != height * width,
        masks,
        f"runs do not add up to {width}x{height} = {height * width} pixels",
    )

    starts, ends = bounds[0::2], bounds[1::2]  # foreground runs: [end of a 0-run, end of a 1-run)
    keep = ends > starts  # drops the padding and empty runs
    return RunLists(starts[keep], ends[keep], np.repeat(masks, pairs)[keep], n)


def mask_string_runs(text: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One mask string → its foreground runs (starts, ends), validated (ValueError if not)."""
    runs = decode_mask_strings([text], height, width)
    return runs.starts, runs.ends
