"""Label-map helpers shared by the segmenters: fast, vectorised, no per-object Python loops."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the labels present to 1..N in order of their old value (0 stays 0)."""
    n = int(labels.max(initial=0))
    if n == 0:
        return labels
    present = np.bincount(labels.ravel(), minlength=n + 1) > 0
    present[0] = False
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[labels].astype(labels.dtype, copy=False)


def remove_small_labels(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Set to 0 every object with fewer than ``min_area`` pixels (labels are not renumbered)."""
    if min_area <= 1 or labels.max(initial=0) == 0:
        return labels
    area = np.bincount(labels.ravel())
    small = area < min_area
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[small[labels]] = 0
    return out


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background holes that lie entirely inside one object with that object's label.

    Holes touched by several objects (gaps between cells) are left empty.
    """
    background = labels == 0
    holes, n = ndi.label(background)
    if n == 0:
        return labels
    # A background component is a hole when it does not touch the image border.
    border = np.unique(
        np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]).astype(np.int64)
    )
    # The labels around each hole: the object values of the 4-neighbours of every hole pixel.
    ring = ndi.binary_dilation(background) & ~background
    ring_holes = _neighbour_hole(holes, ring)
    keep = ring_holes > 0
    hole_id = ring_holes[keep]
    owner = labels[ring][keep] if keep.size else np.empty(0, labels.dtype)
    if hole_id.size == 0:
        return labels
    lo = np.full(n + 1, np.iinfo(np.int64).max)
    hi = np.full(n + 1, -1)
    np.minimum.at(lo, hole_id, owner.astype(np.int64))
    np.maximum.at(hi, hole_id, owner.astype(np.int64))
    fill = np.zeros(n + 1, dtype=np.int64)
    single = (lo == hi) & (hi > 0)
    single[border] = False
    single[0] = False
    fill[single] = hi[single]
    if not single.any():
        return labels
    out = labels.copy()
    mask = single[holes]
    out[mask] = fill[holes[mask]].astype(labels.dtype)
    return out


def _neighbour_hole(holes: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """For each ring pixel, the id of a background component among its 4-neighbours (0 if none)."""
    padded = np.pad(holes, 1)
    best = np.zeros(holes.shape, dtype=holes.dtype)
    for dy, dx in ((0, 1), (1, 0), (2, 1), (1, 2)):
        nb = padded[dy : dy + holes.shape[0], dx : dx + holes.shape[1]]
        best = np.maximum(best, nb)
    return best[ring]


def touching_pairs(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pairs of 4-adjacent objects and the highest contact value between them.

    The contact value of two neighbouring pixels is the smaller of their two ``values``; for each
    touching pair (a < b) the largest such value over the shared boundary is returned (the
    "saddle" a path from one object to the other must cross).

    Returns
    -------
    a, b : int64 arrays of label pairs, ``a < b``
    saddle : array of contact values
    """
    parts = []
    for la, lb, va, vb in (
        (labels[:, :-1], labels[:, 1:], values[:, :-1], values[:, 1:]),
        (labels[:-1], labels[1:], values[:-1], values[1:]),
    ):
        m = (la != lb) & (la > 0) & (lb > 0)
        a, b = la[m].astype(np.int64), lb[m].astype(np.int64)
        parts.append((np.minimum(a, b), np.maximum(a, b), np.minimum(va[m], vb[m])))
    a = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    v = np.concatenate([p[2] for p in parts])
    if a.size == 0:
        return a, b, v
    base = int(labels.max()) + 1
    key = a * base + b
    order = np.lexsort((v, key))
    key, v = key[order], v[order]
    last = np.r_[key[1:] != key[:-1], True]
    a, b = np.divmod(key[last], base)
    return a, b, v[last]


def merge_shallow_basins(
    labels: np.ndarray,
    height: np.ndarray,
    ratio: float,
    intensity: np.ndarray | None = None,
    contrast: float = np.inf,
) -> np.ndarray:
    """Merge touching objects separated by a shallow saddle of ``height``.

    Two touching objects merge when the saddle between them is at least ``ratio`` times the
    lower of their peaks (peaks of merged groups are the maximum of their members). Used on a
    distance transform this keeps lobed or kidney-shaped nuclei whole while two round nuclei
    joined by a narrow neck stay apart. Pairs are merged from the highest saddle down.

    With ``intensity``, two groups whose mean intensities (over all their pixels) differ by
    more than the factor ``contrast`` do not merge (a bright condensed mitotic nucleus against an
    interphase one).
    """
    n = int(labels.max(initial=0))
    if n < 2:
        return labels
    peak = np.zeros(n + 1, dtype=np.float64)
    peak[1:] = ndi.maximum(height, labels, np.arange(1, n + 1))
    a, b, saddle = touching_pairs(labels, height)
    if a.size == 0:
        return labels
    check = intensity is not None and np.isfinite(contrast)
    if check:
        area = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        total = np.bincount(labels.ravel(), weights=intensity.ravel(), minlength=n + 1)
    parent = np.arange(n + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    merged = False
    for i in np.argsort(-saddle, kind="stable"):
        ra, rb = find(int(a[i])), find(int(b[i]))
        if ra == rb or saddle[i] < ratio * min(peak[ra], peak[rb]):
            continue
        if check:
            ma, mb = total[ra] / max(area[ra], 1.0), total[rb] / max(area[rb], 1.0)
            if max(ma, mb) > contrast * max(min(ma, mb), 1e-12):
                continue
            area[ra] += area[rb]
            total[ra] += total[rb]
        parent[rb] = ra
        peak[ra] = max(peak[ra], peak[rb])
        merged = True
    if not merged:
        return labels
    roots = np.array([find(x) for x in range(n + 1)])
    return relabel_sequential(roots[labels].astype(labels.dtype))
