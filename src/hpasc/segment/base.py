"""The segmenter interface shared by every method: field in, cell and nucleus label maps out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Side, in pixels, of the field for which size constants are written (HPA fields are 2048 px).
REFERENCE_SIDE = 2048


@dataclass(frozen=True)
class SegmentationResult:
    """Instance label maps of one field, at the input's height and width.

    ``cells`` and ``nuclei`` are (H, W) uint16 (int32 if a field holds 65,535+ objects); 0 is
    background and the nucleus of cell ``k`` carries label ``k`` where the method knows it.
    """

    cells: np.ndarray
    nuclei: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.cells.max(initial=0))


class Segmenter(abc.ABC):
    """Base class: subclasses implement :meth:`segment`; networks override :meth:`segment_batch`.

    Images are (H, W, 4) arrays in R, G, B, Y order (microtubules, protein, nucleus, ER), uint8
    or uint16. The green (protein) channel is never used to find cells.
    """

    name = "base"
    #: True when fields should be handed over in batches (a network in the calling process).
    batched = False

    @abc.abstractmethod
    def segment(self, image: np.ndarray) -> SegmentationResult:
        """Segment one field."""

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """Segment several fields (one after another unless the method batches)."""
        return [self.segment(image) for image in images]

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release workers or devices the segmenter holds (nothing by default)."""


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 4) RGBY field and return it as an array."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"expected an (H, W, 4) RGBY image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got dtype {image.dtype}")
    return image


def to_unit_float(channel: np.ndarray) -> np.ndarray:
    """Intensities of a uint8/uint16 channel as float32 in [0, 1] (by the dtype's range)."""
    return channel.astype(np.float32) * np.float32(1.0 / np.iinfo(channel.dtype).max)


def label_dtype(n_labels: int) -> np.dtype:
    """uint16 for up to 65,535 objects, int32 beyond."""
    return np.dtype(np.uint16) if n_labels <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map: OpenCV's ``INTER_NEAREST_EXACT``, as the
    7th-place pipeline resizes its masks (labels kept exactly; pixel centres aligned).

    OpenCV's fixed-point source index differs from an exact ``floor((x + 0.5) * h / H)`` on some
    size pairs (2048 -> 1728, 2048 -> 1536), so the reference's own routine is used.
    """
    h, w = labels.shape
    out_h, out_w = shape
    if (h, w) == (out_h, out_w):
        return labels
    dtype = labels.dtype
    work = labels if dtype in (np.uint8, np.uint16, np.int32) else labels.astype(np.int32)
    out = cv2.resize(work, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(dtype, copy=False)
