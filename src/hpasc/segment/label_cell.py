"""HPA ``label_cell``: turn nucleus and cell probability maps into instance label maps.

The algorithm of HPA-Cell-Segmentation's ``label_cell`` (method spec §3), with every area and
radius constant scaled to the resolution of the maps: at scale ``s`` (maps of a 2048-px field
drawn at 2048·s px) areas are multiplied by s² and radii by s, rounded to the nearest integer.

Inputs are (H, W, 3) uint8 maps as the HPA networks produce them after softmax and ×255:
channel 1 = border (touching objects), channel 2 = foreground; channel 0 is unused.

Upstream quirks, each a keyword so masks can match the reference or be corrected:

``wrap_border_sum`` (default True, as upstream)
    The nucleus and cell border channels are added in uint8, so the sum wraps modulo 256 before
    the "not border" test. Kept by default because the seeds depend on it.
``exclude_cell_border`` (default False, as upstream)
    Upstream means to remove cell-border pixels from the cell foreground but negates an int8
    0/1 array bitwise, which yields -1/-2 (both true): the exclusion never happens. True applies
    the intended exclusion.
``uint8_labels`` (default False, *unlike* upstream)
    Upstream casts the cell labels to uint8 before the closing, so a field with more than 255
    cells gets labels that wrap and merge. Off by default: labels keep their value (a field may
    hold any number of cells). True reproduces the wrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_label
from skimage.morphology import disk
from skimage.segmentation import watershed

from hpasc.segment.base import SegmentationResult, resize_labels
from hpasc.segment.morphology import remove_small_labels


@dataclass(frozen=True)
class LabelCellConstants:
    """Pixel-count and radius constants of ``label_cell`` at one resolution.

    The defaults are HPA's, for maps of a 2048-px field (s = 1). :meth:`scaled` gives them at
    another resolution (s = 0.5: seed 125, hole 250, small foreground 2, nucleus 625, cell 1375,
    closing radius 3).
    """

    seed_min_area: int = 500
    nucleus_hole_area: int = 1000
    foreground_min_area: int = 8
    nucleus_min_area: int = 2500
    cell_min_area: int = 5500
    closing_radius: int = 6

    @classmethod
    def scaled(cls, scale: float) -> LabelCellConstants:
        """Constants for maps drawn at ``scale`` × the 2048-px resolution."""
        if not scale > 0:
            raise ValueError(f"label_cell scale must be positive, got {scale}")
        base = cls()
        area = scale * scale
        return cls(
            seed_min_area=round(base.seed_min_area * area),
            nucleus_hole_area=round(base.nucleus_hole_area * area),
            foreground_min_area=round(base.foreground_min_area * area),
            nucleus_min_area=round(base.nucleus_min_area * area),
            cell_min_area=round(base.cell_min_area * area),
            closing_radius=round(base.closing_radius * scale),
        )


# Thresholds of the reference, in probability units.
NUCLEUS_THRESHOLD = 0.4
SEED_THRESHOLD = NUCLEUS_THRESHOLD - 0.25
BORDER_THRESHOLD = 0.05
MIN_CELL_THRESHOLD = 0.22


def label_cell(
    nuclei_pred: np.ndarray,
    cell_pred: np.ndarray,
    scale: float = 1.0,
    *,
    wrap_border_sum: bool = True,
    exclude_cell_border: bool = False,
    uint8_labels: bool = False,
    constants: LabelCellConstants | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus and cell label maps from HPA network outputs.

    Parameters
    ----------
    nuclei_pred, cell_pred : (H, W, 3) uint8
        Softmax outputs ×255 of the nucleus and cell networks (channel 1 border, 2 foreground).
    scale : float
        Resolution of the maps relative to a 2048-px field (0.5 for 1024-px maps).
    wrap_border_sum, exclude_cell_border, uint8_labels : bool
        Upstream quirks, see the module docstring.
    constants : LabelCellConstants, optional
        Overrides the constants derived from ``scale``.

    Returns
    -------
    nuclei, cells : (H, W) arrays
        ``cells`` uint16 (int32 beyond 65,535 cells), 1..N; ``nuclei`` carries the label of the
        cell each nucleus lies in.
    """
    nuclei_pred = _check_pred(nuclei_pred, "nuclei_pred")
    cell_pred = _check_pred(cell_pred, "cell_pred")
    if nuclei_pred.shape != cell_pred.shape:
        raise ValueError(f"prediction shapes differ: {nuclei_pred.shape} vs {cell_pred.shape}")
    k = constants or LabelCellConstants.scaled(scale)

    nuclei = _nuclei_watershed(nuclei_pred, cell_pred, k, wrap_border_sum)
    nuclei = remove_small_labels(nuclei, k.nucleus_min_area)
    nuclei = connected_label(nuclei)

    body = cell_pred[..., 2]
    threshold = max(MIN_CELL_THRESHOLD, 0.5 * _otsu(body / 255.0))
    region = body / 255.0 > threshold
    if exclude_cell_border:
        region &= ~(cell_pred[..., 1] / 255.0 > BORDER_THRESHOLD)
    # The reference's np.clip(body, 255 * threshold, body) is the identity (its upper bound is
    # the map itself), so the elevation is the whole inverted map.
    elevation = -body.astype(np.float64)
    cells = watershed(elevation, nuclei, mask=region)
    cells = remove_small_labels(cells, k.cell_min_area)
    if uint8_labels:
        cells = cells.astype(np.uint8)
    cells = _close_labels(cells, k.closing_radius)
    cells = _fill_holes_per_label(cells)

    # Grow the cells into border pixels next to them (cells clear on the border keep their edge).
    grow = (cells > 0) | (cell_pred[..., 1] / 255.0 > BORDER_THRESHOLD)
    cells = watershed(elevation, cells, mask=grow)
    cells = _fill_holes_per_label(cells)
    cells = connected_label(cells > 0)
    cells = remove_small_labels(cells, k.cell_min_area)
    cells = connected_label(cells > 0)

    nuclei = connected_label((cells > 0) & (nuclei > 0))
    nuclei = remove_small_labels(nuclei, k.nucleus_min_area)
    nuclei = np.where(nuclei > 0, cells, 0)
    dtype = np.uint16 if cells.max(initial=0) <= np.iinfo(np.uint16).max else np.int32
    return nuclei.astype(dtype), cells.astype(dtype)


def label_nuclei(nuclei_pred: np.ndarray) -> np.ndarray:
    """Nucleus labels from the nucleus map alone: HPA-Cell-Segmentation's ``label_nuclei``.

    Seeds = foreground pixels off the border class, eroded once (4-neighbourhood, the image edge
    counting as foreground); mask = foreground with holes < 1,000 px filled; a watershed of the
    flat mask from the seeds with watershed lines; nuclei < 2,500 px removed; 8-connected
    relabelling. As upstream, the thresholds 0.15 (seed) and 0.4 (mask) are compared with the
    uint8 values themselves, so both mean "> 0", and the border test is "> 0.05" likewise.

    Returns
    -------
    (H, W) int64 labels 1..N, equal to upstream's on the stored vectors.
    """
    pred = _check_pred(nuclei_pred, "nuclei_pred")
    body = pred[..., 2]
    seeds = (body * (pred[..., 1] <= BORDER_THRESHOLD)) > SEED_THRESHOLD
    seeds = ndi.binary_erosion(seeds, border_value=1)
    markers = connected_label(seeds)
    foreground = body > NUCLEUS_THRESHOLD
    foreground = ~_remove_small_components(~foreground, LabelCellConstants().nucleus_hole_area)
    nuclei = watershed(foreground.astype(np.uint8), markers, mask=foreground, watershed_line=True)
    nuclei = remove_small_labels(nuclei, LabelCellConstants().nucleus_min_area)
    return connected_label(nuclei)


def label_cell_at_shape(
    nuclei_pred: np.ndarray,
    cell_pred: np.ndarray,
    shape: tuple[int, int],
    scale: float,
    options: dict | None = None,
) -> SegmentationResult:
    """:func:`label_cell` at ``scale``, label maps resized to ``shape`` (nearest neighbour)."""
    nuclei, cells = label_cell(nuclei_pred, cell_pred, scale, **(options or {}))
    return SegmentationResult(
        cells=resize_labels(cells, shape), nuclei=resize_labels(nuclei, shape)
    )


def _check_pred(pred: np.ndarray, name: str) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim != 3 or pred.shape[2] != 3 or pred.dtype != np.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 map, got {pred.shape} {pred.dtype}")
    return pred


def _nuclei_watershed(
    nuclei_pred: np.ndarray, cell_pred: np.ndarray, k: LabelCellConstants, wrap: bool
) -> np.ndarray:
    """Seeded watershed of the nucleus foreground (step 1 of the reference)."""
    dtype = np.uint8 if wrap else np.int32
    border_sum = nuclei_pred[..., 1].astype(dtype) + cell_pred[..., 1].astype(dtype)
    not_border = 1.0 - border_sum / 255.0 > BORDER_THRESHOLD
    foreground_p = nuclei_pred[..., 2] / 255.0
    seeds = foreground_p * not_border > SEED_THRESHOLD
    seeds = _remove_small_components(seeds, k.seed_min_area)
    markers, _ = ndi.label(seeds)
    foreground = foreground_p > NUCLEUS_THRESHOLD
    foreground = ~_remove_small_components(~foreground, k.nucleus_hole_area)
    foreground = _remove_small_components(foreground, k.foreground_min_area)
    # Flooding a flat image from the seeds splits the foreground by geodesic distance.
    flat = foreground.astype(np.uint8)
    return watershed(flat, markers, mask=foreground, watershed_line=True)


def _remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 4-connected components of ``mask`` with fewer than ``min_area`` pixels."""
    if min_area <= 1:
        return mask
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    small = np.bincount(labels.ravel()) < min_area
    small[0] = False
    return mask & ~small[labels]


def _close_labels(labels: np.ndarray, radius: int) -> np.ndarray:
    """Grey closing of a label map with a disk (edges reflected, as the reference)."""
    if radius < 1 or labels.max(initial=0) == 0:
        return labels
    kernel = disk(radius).astype(np.uint8)
    # OpenCV morphology takes up to 16-bit integers; float32 holds larger labels exactly.
    work = labels.astype(np.uint16 if labels.max() <= np.iinfo(np.uint16).max else np.float32)
    closed = cv2.morphologyEx(work, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REFLECT)
    return closed.astype(np.int64 if labels.dtype != np.uint8 else np.uint8)


def _fill_holes_per_label(labels: np.ndarray) -> np.ndarray:
    """The reference's hole filling: cut every label boundary, fill holes, relabel (4-connected).

    Cutting the boundaries (pixels with a 4-neighbour of another value, background included)
    separates touching cells and trims one pixel from every cell edge, as upstream does.
    """
    work = labels.astype(np.uint16 if labels.max() <= np.iinfo(np.uint16).max else np.float32)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    high = cv2.dilate(work, cross, borderType=cv2.BORDER_REPLICATE)
    low = cv2.erode(work, cross, borderType=cv2.BORDER_REPLICATE)
    inside = (labels > 0) & (high == low)
    filled = ndi.binary_fill_holes(inside)
    out, _ = ndi.label(filled)
    return out


def _otsu(values: np.ndarray) -> float:
    if values.max() <= values.min():
        return float(values.max())
    return float(threshold_otsu(values))
