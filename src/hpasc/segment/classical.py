"""Weight-free cell segmentation: nuclei from the blue channel, cells grown from them on red + yellow.

Size constants are written for a 2048-px HPA field and scaled to the working resolution; the work
happens on a reduced copy of the field (default a quarter of the input side, 512 px for a
2048-px field) and the label maps come back at the input size (nearest neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from hpasc.segment.base import (
    REFERENCE_SIDE,
    SegmentationResult,
    Segmenter,
    check_image,
    label_dtype,
    resize_labels,
    to_unit_float,
)
from hpasc.segment.morphology import (
    fill_label_holes,
    merge_shallow_basins,
    relabel_sequential,
    remove_small_labels,
)

#: Working side as a fraction of the input side when no working size is given (2048 -> 512) ...
DEFAULT_WORKING_FACTOR = 0.25
#: ... but never below this many pixels (small fields are worked on at full size up to it).
MIN_WORKING_SIDE = 512


def default_working_size(side: int) -> int:
    """Working side for an input whose longer side is ``side``: a quarter of it, at least 512
    (or the whole side when smaller)."""
    return min(side, max(MIN_WORKING_SIDE, round(side * DEFAULT_WORKING_FACTOR)))


@dataclass(frozen=True)
class ClassicalParams:
    """Constants of the classical segmenter. Lengths in pixels and areas in pixels² of a 2048-px field.

    Attributes
    ----------
    nucleus_sigma : Gaussian smoothing of the blue channel before thresholding.
    nucleus_threshold : multiple of the Otsu threshold of the smoothed blue channel.
    nucleus_min_area : nuclei smaller than this are dropped (HPA's ``label_cell`` uses 2500).
    nucleus_hole_area : holes in a nucleus smaller than this are filled (nucleoli).
    peak_radius : radius of the window in which a distance-transform maximum seeds a nucleus.
    split_ratio : touching nucleus parts stay apart only when the neck between them is narrower
        than this fraction of the thinner part (see ``merge_shallow_basins``).
    nucleus_contrast : touching nucleus parts whose mean blue intensities differ by more than
        this factor stay apart whatever the neck (condensed mitotic chromatin is brighter).
    cell_sigma : Gaussian smoothing of red + yellow.
    cell_threshold : multiple of the Otsu threshold of the smoothed red + yellow signal.
    cell_min_area : cells smaller than this are dropped (HPA's ``label_cell`` uses 5500).
    cell_hole_area : holes in the cell foreground smaller than this are filled; larger ones are
        gaps between cells and stay background.
    distance_weight : pull of the border between touching cells towards midway between their
        nuclei: elevation added per 100 px of distance from the nearest nucleus, in units of the
        foreground (Otsu) level. 0 puts borders in the dimmest valley only.
    """

    nucleus_sigma: float = 6.0
    nucleus_threshold: float = 0.5
    nucleus_min_area: float = 2500.0
    nucleus_hole_area: float = 1000.0
    peak_radius: float = 12.0
    split_ratio: float = 0.5
    nucleus_contrast: float = 1.6
    cell_sigma: float = 8.0
    cell_threshold: float = 0.25
    cell_min_area: float = 5500.0
    cell_hole_area: float = 2500.0
    distance_weight: float = 0.6


def segment_classical(
    image: np.ndarray,
    *,
    working_size: int | None = None,
    input_scale: float | None = None,
    params: ClassicalParams | None = None,
) -> SegmentationResult:
    """Segment the cells and nuclei of one RGBY field without a trained model.

    Parameters
    ----------
    image : (H, W, 4) uint8 or uint16 array
        Channels red (microtubules), green (protein, unused), blue (nucleus), yellow (ER).
    working_size : int, optional
        Longer side, in pixels, of the copy the work happens on. Default: a quarter of the
        input's longer side (512 for 2048, 768 for 3072) but at least 512 px, so small fields
        keep enough detail. Never larger than the input.
    input_scale : float, optional
        Resolution of the input relative to a whole 2048-px HPA field. Default: the longer side
        over 2048, i.e. the image is taken to be a whole field at any resolution (a 768-px
        resized field gives 0.375). Give 1.0 for a crop of a full-resolution field.
    params : ClassicalParams, optional
        Constants (at 2048-px scale).

    Returns
    -------
    SegmentationResult
        Cell and nucleus label maps at (H, W); nucleus ``k`` lies in cell ``k``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image = np.zeros((256, 256, 4), np.uint8)
    >>> yy, xx = np.mgrid[:256, :256]
    >>> image[..., 0][(yy - 128) ** 2 + (xx - 128) ** 2 < 70**2] = 120
    >>> image[..., 2][(yy - 128) ** 2 + (xx - 128) ** 2 < 30**2] = 200
    >>> segment_classical(image, input_scale=0.5).n_cells
    1
    """
    image = check_image(image)
    p = params or ClassicalParams()
    height, width = image.shape[:2]
    side = max(height, width)
    if working_size is None:
        working_size = default_working_size(side)
    if working_size <= 0:
        raise ValueError(f"working_size must be positive, got {working_size}")
    factor = min(1.0, working_size / side)
    scale = (side / REFERENCE_SIDE if input_scale is None else input_scale) * factor
    if scale <= 0:
        raise ValueError(f"input_scale must be positive, got {input_scale}")
    size = (max(1, round(width * factor)), max(1, round(height * factor)))

    def shrink(channel: np.ndarray) -> np.ndarray:
        small = (
            channel if factor == 1.0 else cv2.resize(channel, size, interpolation=cv2.INTER_AREA)
        )
        return to_unit_float(small)

    blue = shrink(image[..., 2])
    body = shrink(image[..., 0]) + shrink(image[..., 3])
    nuclei = find_nuclei(blue, scale, p)
    cells = grow_cells(body, nuclei, scale, p)
    # Nuclei of dropped cells go too, so nucleus k always sits in cell k.
    nuclei = np.where(cells == nuclei, nuclei, 0)
    dtype = label_dtype(int(cells.max(initial=0)))
    return SegmentationResult(
        cells=resize_labels(cells.astype(dtype), (height, width)),
        nuclei=resize_labels(nuclei.astype(dtype), (height, width)),
    )


def find_nuclei(blue: np.ndarray, scale: float, p: ClassicalParams) -> np.ndarray:
    """Nucleus label map (int32) of a float blue channel at resolution ``scale`` of a 2048 field."""
    smooth = _blur(blue, p.nucleus_sigma * scale)
    foreground = smooth > _otsu(smooth) * p.nucleus_threshold
    foreground = _fill_small_holes(foreground, p.nucleus_hole_area * scale**2)
    if not foreground.any():
        return np.zeros(blue.shape, np.int32)
    distance = cv2.distanceTransform(foreground.astype(np.uint8), cv2.DIST_L2, 5)
    radius = max(1, round(p.peak_radius * scale))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    peaks = (distance >= cv2.dilate(distance, kernel)) & foreground
    markers, _ = ndi.label(peaks)
    nuclei = watershed(-distance, markers, mask=foreground).astype(np.int32)
    nuclei = merge_shallow_basins(
        nuclei, distance, p.split_ratio, intensity=smooth, contrast=p.nucleus_contrast
    )
    nuclei = remove_small_labels(nuclei, p.nucleus_min_area * scale**2)
    return relabel_sequential(nuclei)


def grow_cells(
    body: np.ndarray, nuclei: np.ndarray, scale: float, p: ClassicalParams
) -> np.ndarray:
    """Cells grown from ``nuclei`` over the smoothed red + yellow signal ``body`` (int32 labels)."""
    if nuclei.max(initial=0) == 0:
        return np.zeros(body.shape, np.int32)
    smooth = _blur(body, p.cell_sigma * scale)
    otsu = _otsu(smooth)
    foreground = (smooth > otsu * p.cell_threshold) | (nuclei > 0)
    foreground = _fill_small_holes(foreground, p.cell_hole_area * scale**2)
    # Flooding the inverted signal puts borders between touching cells in the dimmest valley;
    # the distance term puts them midway between nuclei where the signal has no valley.
    elevation = -smooth / max(otsu, 1e-6)
    if p.distance_weight > 0:
        distance = cv2.distanceTransform((nuclei == 0).astype(np.uint8), cv2.DIST_L2, 5)
        elevation += distance * (p.distance_weight / (100.0 * scale))
    cells = watershed(elevation, nuclei, mask=foreground).astype(np.int32)
    cells = fill_label_holes(cells)
    cells = remove_small_labels(cells, p.cell_min_area * scale**2)
    return cells


def _blur(channel: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(channel, (0, 0), sigma) if sigma >= 0.3 else channel


def _otsu(values: np.ndarray) -> float:
    if values.max() <= values.min():
        return float(values.max())
    return float(threshold_otsu(values))


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    holes = ndi.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, _ = ndi.label(holes)
    small = np.bincount(labels.ravel()) < max_area
    small[0] = False
    return mask | small[labels]


class ClassicalSegmenter(Segmenter):
    """Weight-free segmenter (see :func:`segment_classical`); options are its keyword arguments
    plus any :class:`ClassicalParams` field (e.g. ``cell_threshold=0.4``)."""

    name = "classical"

    def __init__(
        self,
        working_size: int | None = None,
        input_scale: float | None = None,
        params: ClassicalParams | None = None,
        **constants: float,
    ) -> None:
        known = {f.name for f in fields(ClassicalParams)}
        unknown = sorted(set(constants) - known)
        if unknown:
            raise ValueError(
                f"unknown classical segmenter option(s) {unknown}; known: {sorted(known)}"
            )
        self.working_size = working_size
        self.input_scale = input_scale
        self.params = replace(params or ClassicalParams(), **constants)

    def segment(self, image: np.ndarray) -> SegmentationResult:
        return segment_classical(
            image, working_size=self.working_size, input_scale=self.input_scale, params=self.params
        )
