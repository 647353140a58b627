"""Cell segmentation: one interface, several methods chosen by name.

>>> from hpasc.segment import get_segmenter
>>> segmenter = get_segmenter("classical")          # weight-free default
>>> result = segmenter.segment(image)                # doctest: +SKIP
>>> result.cells, result.nuclei                      # doctest: +SKIP

Methods live in one module each and are imported only when asked for (the network needs torch).
"""

from __future__ import annotations

import importlib

from hpasc.segment.base import SegmentationResult, Segmenter

#: name -> "module:class" of every segmenter (a class object is accepted too).
SEGMENTERS: dict[str, str | type[Segmenter]] = {
    "classical": "hpasc.segment.classical:ClassicalSegmenter",
    "hpa-unet": "hpasc.segment.hpa_unet:HpaUnetSegmenter",
    "cellpose": "hpasc.segment.cellpose:CellposeSegmenter",
}

DEFAULT_SEGMENTER = "classical"


def segmenter_class(name: str) -> type[Segmenter]:
    """The class of the segmenter called ``name`` (imports its module)."""
    try:
        target = SEGMENTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown segmenter {name!r}; choose one of {sorted(SEGMENTERS)}"
        ) from None
    if isinstance(target, type):
        return target
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_segmenter(name: str = DEFAULT_SEGMENTER, **options: object) -> Segmenter:
    """Build the segmenter called ``name`` (one of :data:`SEGMENTERS`) with its options."""
    return segmenter_class(name)(**options)


__all__ = [
    "DEFAULT_SEGMENTER",
    "SEGMENTERS",
    "SegmentationResult",
    "Segmenter",
    "get_segmenter",
    "segmenter_class",
]
