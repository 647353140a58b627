"""Pre- and post-processing around the HPA networks: one preset per reference pipeline.

A preset turns an RGBY field into the two network inputs (:meth:`Preset.prepare`) and the two
softmax outputs into the uint8 maps ``label_cell`` reads, with the label scale to read them at
(:meth:`Preset.restore`). The network and ``label_cell`` are shared by all presets.

``hpacellseg``
    HPA-Cell-Segmentation's ``CellSegmentator`` with its defaults: ``skimage.transform.rescale``
    by 0.25 (float64, anti-aliased), the nucleus input is blue × 3 normalised with the three
    different channel means, maps restored to the field resolution (cv2 area resize) and
    labelled there with the unscaled constants. Where the shrunk side is not a multiple of 32
    (1728 -> 432) upstream's default ``padding=False`` crashes the network; there the preset
    does what ``padding=True`` does (reflect padding of 32 px top/left, ``32 - n % 32``
    bottom/right).
``pfcell-2021``
    The 7th-place ``create_cell_mask``: every field ``skimage.transform.resize``-d to exactly
    512 × 512 (no padding), the nucleus input is the normalised blue plane three times (blue's
    mean on every copy), maps area-resized to the square 2048·s grid and labelled at scale s.
``fast``
    hpasc's earlier variant: cv2 area resize of the integer image (no float64 Gaussian), blue × 3
    with the three means, padding only where needed, maps on the 2048·s grid keeping the aspect.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import transform

from hpasc.segment.base import REFERENCE_SIDE, SegmentationResult, to_unit_float
from hpasc.segment.label_cell import label_cell_at_shape

#: Normalisation of HPA's segmentator (DPN ImageNet constants): (x - mean) / std per channel.
NORMALIZE_MEAN = np.array([124 / 255, 117 / 255, 104 / 255], np.float32)
NORMALIZE_STD = np.float32(1 / (0.0167 * 255))
#: Side multiple the network needs.
SIZE_MULTIPLE = 32
#: Upstream's reflective padding on the top and left.
PAD = 32
#: Network input side of the 7th-place pipeline.
PFCELL_NET_SIZE = 512


@dataclass(frozen=True)
class Box:
    """Where the field lies in the network grid: rows [top, top + rows), cols [left, left + cols)."""

    top: int
    left: int
    rows: int
    cols: int

    def crop(self, prob: np.ndarray) -> np.ndarray:
        """(H', W', 3) channels-last copy of the field's part of a (3, h, w) network output."""
        part = prob[:, self.top : self.top + self.rows, self.left : self.left + self.cols]
        return np.ascontiguousarray(part.transpose(1, 2, 0))


def normalise(x: np.ndarray, means: np.ndarray = NORMALIZE_MEAN) -> np.ndarray:
    """(3, h, w) float32 network input of an (h, w, 3) [0, 1] stack: (x - mean[c]) / std.

    In float32 and as a division, like the references' torch ``sub_`` / ``div_``, so the inputs
    equal theirs to the bit.
    """
    x = np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32)
    return (x - means.astype(np.float32)[:, None, None]) / NORMALIZE_STD


def pad_if_needed(x: np.ndarray) -> tuple[np.ndarray, Box]:
    """Upstream's ``padding=True`` reflect padding of an (h, w, 3) stack, used only where a side
    is not a multiple of 32 (where it is, upstream's default ``padding=False`` applies)."""
    h, w = x.shape[:2]
    if h % SIZE_MULTIPLE == 0 and w % SIZE_MULTIPLE == 0:
        return x, Box(0, 0, h, w)
    # Like upstream, a side that is a multiple of 32 still gets 32 px at both ends.
    bottom, right = SIZE_MULTIPLE - h % SIZE_MULTIPLE, SIZE_MULTIPLE - w % SIZE_MULTIPLE
    padded = cv2.copyMakeBorder(x, PAD, bottom, PAD, right, cv2.BORDER_REFLECT)
    return padded, Box(PAD, PAD, h, w)


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 like ``skimage.util.img_as_ubyte`` of float32 (rint of x·255)."""
    return np.clip(np.rint(prob * np.float32(255)), 0, 255).astype(np.uint8)


def cell_stack(image: np.ndarray, two_channel: bool) -> np.ndarray:
    """(H, W, 3) (red, yellow, blue) of an RGBY field; yellow zero for the 2-channel model."""
    er = np.zeros_like(image[..., 3]) if two_channel else image[..., 3]
    return np.dstack([image[..., 0], er, image[..., 2]])


class Preset(abc.ABC):
    """Pre-processing and map restoration of one reference pipeline."""

    name: str
    #: Default ``label_cell`` scale (None: the maps' own resolution, unscaled constants).
    default_label_scale: float | None

    def __init__(self, label_scale: float | None = None) -> None:
        self.label_scale = self.default_label_scale if label_scale is None else label_scale
        if self.label_scale is not None and not self.label_scale > 0:
            raise ValueError(f"label_scale must be positive, got {self.label_scale}")

    @abc.abstractmethod
    def prepare(self, image: np.ndarray, two_channel: bool) -> tuple[np.ndarray, np.ndarray, Box]:
        """(nucleus input, cell input, field box) of an (H, W, 4) RGBY field."""

    @abc.abstractmethod
    def map_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the maps ``label_cell`` reads, for a field of ``shape``."""

    def restore(
        self, nuclei_prob: np.ndarray, cell_prob: np.ndarray, box: Box, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """uint8 (h, w, 3) nucleus and cell maps from (3, h', w') softmax outputs, and the
        ``label_cell`` scale to read them at.

        Both references zero channel 0, convert the nucleus map to uint8 before the area resize
        and the cell map after it.
        """
        size = self.map_grid(shape)[::-1]
        nuclei = box.crop(nuclei_prob)
        nuclei[..., 0] = 0
        nuclei = cv2.resize(to_uint8(nuclei), size, interpolation=cv2.INTER_AREA)
        cell = box.crop(cell_prob)
        cell[..., 0] = 0
        cell = to_uint8(cv2.resize(cell, size, interpolation=cv2.INTER_AREA))
        return nuclei, cell, 1.0 if self.label_scale is None else self.label_scale


class HpaCellSegPreset(Preset):
    """HPA-Cell-Segmentation's ``CellSegmentator`` (see the module docstring)."""

    name = "hpacellseg"
    default_label_scale = None

    def __init__(self, label_scale: float | None = None, scale_factor: float = 0.25) -> None:
        super().__init__(label_scale)
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}")
        self.scale_factor = scale_factor

    def prepare(self, image: np.ndarray, two_channel: bool) -> tuple[np.ndarray, np.ndarray, Box]:
        # Rescaling works channel by channel, so the nucleus stack's blue is the cell stack's.
        small = transform.rescale(
            cell_stack(image, two_channel), self.scale_factor, channel_axis=-1
        )
        small, box = pad_if_needed(small)
        cell_x = normalise(small)
        nuclei_x = normalise(np.repeat(small[..., 2:3], 3, axis=2))
        return nuclei_x, cell_x, box

    def map_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.label_scale is None:
            # Upstream passes dsize (rows, cols), transposing non-square fields; hpasc keeps the
            # field's orientation (equal on the square HPA fields).
            return shape
        return label_grid(shape, self.label_scale)


class PfCellPreset(Preset):
    """The 7th-place pipeline (``create_cell_mask``; see the module docstring)."""

    name = "pfcell-2021"
    default_label_scale = 1.0

    def __init__(self, label_scale: float | None = None, scale_factor: float | None = None) -> None:
        if scale_factor is not None:
            raise ValueError(
                "the pfcell-2021 preset resizes every field to 512 px; scale_factor does not apply"
            )
        super().__init__(label_scale)

    def prepare(self, image: np.ndarray, two_channel: bool) -> tuple[np.ndarray, np.ndarray, Box]:
        small = transform.resize(cell_stack(image, two_channel), (PFCELL_NET_SIZE,) * 2)
        cell_x = normalise(small)
        return np.ascontiguousarray(cell_x[[2, 2, 2]]), cell_x, Box(0, 0, *small.shape[:2])

    def map_grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        # Every field went to the square 512 grid, so the label grid is square too.
        side = int(REFERENCE_SIDE * self.label_scale)
        return side, side


class FastPreset(HpaCellSegPreset):
    """hpasc's cheaper pre-processing (see the module docstring)."""

    name = "fast"
    default_label_scale = 0.5

    def prepare(self, image: np.ndarray, two_channel: bool) -> tuple[np.ndarray, np.ndarray, Box]:
        stack = cell_stack(image, two_channel)
        h, w = stack.shape[:2]
        size = (max(1, round(w * self.scale_factor)), max(1, round(h * self.scale_factor)))
        if size != (w, h):
            stack = cv2.resize(stack, size, interpolation=cv2.INTER_AREA)
        small, box = pad_if_needed(to_unit_float(stack))
        cell_x = normalise(small)
        return normalise(np.repeat(small[..., 2:3], 3, axis=2)), cell_x, box


def label_field(
    preset: Preset,
    nuclei_prob: np.ndarray,
    cell_prob: np.ndarray,
    box: Box,
    shape: tuple[int, int],
    options: dict | None = None,
) -> SegmentationResult:
    """Restore the maps of one field as ``preset`` does and label them, at the field's size.

    Torch-free, so the CPU workers that run it start quickly.
    """
    nuclei_map, cell_map, scale = preset.restore(nuclei_prob, cell_prob, box, shape)
    return label_cell_at_shape(nuclei_map, cell_map, shape, scale, options)


def label_grid(shape: tuple[int, int], label_scale: float) -> tuple[int, int]:
    """(rows, cols) of the label grid: 2048·s along the longer side, the field's aspect kept."""
    k = REFERENCE_SIDE * label_scale / max(shape)
    return max(1, round(shape[0] * k)), max(1, round(shape[1] * k))


PRESETS: dict[str, type[Preset]] = {p.name: p for p in (HpaCellSegPreset, PfCellPreset, FastPreset)}
DEFAULT_PRESET = "hpacellseg"


def get_preset(name: str, **options: float | None) -> Preset:
    """The preset called ``name`` (one of :data:`PRESETS`) with its options."""
    try:
        cls = PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown hpa-unet preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
    return cls(**{k: v for k, v in options.items() if v is not None})
