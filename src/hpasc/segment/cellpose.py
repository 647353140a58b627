"""Segmentation with Cellpose, when the ``cellpose`` package is installed (``pip install
hpasc[cellpose]``).

Cellpose sees a cytoplasm channel (red + yellow: microtubules and ER) and a nucleus channel
(blue) at a reduced working size, like the classical segmenter. Nuclei are the blue foreground
(as the classical segmenter finds it) inside each Cellpose cell, carrying the cell's label.
"""

from __future__ import annotations

import importlib
from typing import Any

import cv2
import numpy as np
import torch

from hpasc.errors import InputError
from hpasc.segment.base import (
    REFERENCE_SIDE,
    SegmentationResult,
    Segmenter,
    check_image,
    label_dtype,
    resize_labels,
    to_unit_float,
)
from hpasc.segment.classical import ClassicalParams, default_working_size, find_nuclei
from hpasc.segment.morphology import relabel_sequential


def import_cellpose_models() -> Any:
    """``cellpose.models``, or an InputError that says how to install it."""
    try:
        return importlib.import_module("cellpose.models")
    except ImportError:
        raise InputError(
            "the cellpose method needs the cellpose package: pip install 'hpasc[cellpose]'"
        ) from None


class CellposeSegmenter(Segmenter):
    """Cellpose cells, classical nuclei inside them.

    Parameters
    ----------
    model_type : str
        Cellpose model name (e.g. ``"cyto3"``); ignored by Cellpose versions that ship one model.
    diameter : float, optional
        Typical cell diameter in pixels of a 2048-px field; default: Cellpose estimates it.
    working_size : int, optional
        Longer side Cellpose works at; default as the classical segmenter (a quarter of the
        input side, at least 512 px).
    gpu : bool, optional
        Use the GPU; default when torch sees CUDA.
    """

    name = "cellpose"

    def __init__(
        self,
        model_type: str = "cyto3",
        diameter: float | None = None,
        working_size: int | None = None,
        gpu: bool | None = None,
    ) -> None:
        models = import_cellpose_models()
        if gpu is None:
            gpu = torch.cuda.is_available()
        self.model = models.CellposeModel(gpu=gpu, model_type=model_type)
        self.diameter = diameter
        self.working_size = working_size

    def segment(self, image: np.ndarray) -> SegmentationResult:
        image = check_image(image)
        height, width = image.shape[:2]
        side = max(height, width)
        working = self.working_size or default_working_size(side)
        factor = min(1.0, working / side)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))

        def shrink(channel: np.ndarray) -> np.ndarray:
            small = (
                cv2.resize(channel, size, interpolation=cv2.INTER_AREA) if factor < 1 else channel
            )
            return to_unit_float(small)

        blue = shrink(image[..., 2])
        cyto = shrink(image[..., 0]) + shrink(image[..., 3])
        stack = np.dstack([cyto / max(float(cyto.max()), 1e-6), blue, np.zeros_like(blue)])
        diameter = None if self.diameter is None else self.diameter * side * factor / REFERENCE_SIDE
        # channels=[1, 2]: first channel is cytoplasm, second the nucleus (Cellpose's convention).
        out = self.model.eval(stack, diameter=diameter, channels=[1, 2])
        cells = relabel_sequential(np.asarray(out[0]).astype(np.int64))
        scale = side * factor / REFERENCE_SIDE
        nuclei = np.where(find_nuclei(blue, scale, ClassicalParams()) > 0, cells, 0)
        dtype = label_dtype(int(cells.max(initial=0)))
        return SegmentationResult(
            cells=resize_labels(cells.astype(dtype), (height, width)),
            nuclei=resize_labels(nuclei.astype(dtype), (height, width)),
        )
