"""Segmentation with the HPA-Cell-Segmentation networks (nucleus and cell DPN-UNets).

Pre-processing follows HPA's ``CellSegmentator``: each field is shrunk by ``scale_factor``
(0.25: 2048 -> 512), reflect-padded to a multiple of 32 when needed (32 px top/left and
32 - n mod 32 bottom/right, as upstream's ``padding=True``; 1728 -> 432 -> 480), normalised with
the DPN ImageNet constants, and run in batches on the fastest device. The nucleus network sees
the blue channel three times; the cell network sees (red, yellow, blue), or (red, 0, blue) for
the 2-channel model. Post-processing is :func:`~hpasc.segment.label_cell.label_cell` at label
scale ``s`` (maps drawn at 2048·s px along the longer side), in a pool of CPU processes, and the
label maps are resized back to the field (nearest neighbour).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from hpasc.errors import InputError
from hpasc.segment.base import (
    REFERENCE_SIDE,
    SegmentationResult,
    Segmenter,
    check_image,
    to_unit_float,
)
from hpasc.segment.dpn_unet import DPNUnet
from hpasc.segment.hpa_weights import load_weights, missing_weights_message
from hpasc.segment.label_cell import label_cell_at_shape

#: Normalisation of HPA's segmentator (DPN ImageNet constants): (x - mean) / std per channel.
NORMALIZE_MEAN = (124 / 255, 117 / 255, 104 / 255)
NORMALIZE_STD = 1 / (0.0167 * 255)
#: Side multiple the network needs.
SIZE_MULTIPLE = 32
#: Upstream's reflective padding on the top and left.
PAD = 32


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_network(weights: str | Path | nn.Module, device: torch.device) -> nn.Module:
    """A DPN-UNet in eval mode on ``device``: ``weights`` is a model file or a ready module."""
    if isinstance(weights, nn.Module):
        return weights.to(device).eval()
    path = Path(weights)
    if not path.is_file():
        raise InputError(missing_weights_message(path))
    # Built without initialising 139 M parameters: the file supplies every tensor.
    with torch.device("meta"):
        model = DPNUnet()
    load_weights(model, path)
    return model.to(device).eval()


def prepare_input(channels: np.ndarray, scale_factor: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """Network input (3, H', W') float32 of an (H, W, 3) uint8/uint16 stack, and its crop box.

    Returns the normalised, shrunk and padded array and ``(top, left, height, width)`` of the
    field inside it.
    """
    height, width = channels.shape[:2]
    size = (max(1, round(width * scale_factor)), max(1, round(height * scale_factor)))
    if size != (width, height):
        channels = cv2.resize(channels, size, interpolation=cv2.INTER_AREA)
    x = to_unit_float(channels)
    h, w = x.shape[:2]
    top = left = bottom = right = 0
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        top = left = PAD
        bottom = SIZE_MULTIPLE - h % SIZE_MULTIPLE
        right = SIZE_MULTIPLE - w % SIZE_MULTIPLE
        x = cv2.copyMakeBorder(x, top, bottom, left, right, cv2.BORDER_REFLECT)
    x = (x - np.asarray(NORMALIZE_MEAN, np.float32)) * np.float32(1 / NORMALIZE_STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)), (top, left, h, w)


def run_network(
    model: nn.Module, inputs: Sequence[np.ndarray], batch_size: int, device: torch.device
) -> list[np.ndarray]:
    """Softmax outputs (3, H, W) float32 of ``inputs`` (same-shape arrays), in batches."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(np.stack(inputs[start : start + batch_size])).to(device)
            prob = torch.softmax(model(batch), dim=1)
            out.extend(prob.float().cpu().numpy())
    return out


def restore_maps(
    nuclei_prob: np.ndarray,
    cell_prob: np.ndarray,
    box: tuple[int, ...],
    shape: tuple[int, int],
    label_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H', W', 3) nucleus and cell maps on the label grid (2048·s along the longer side).

    Channel 0 is zeroed as upstream. The nucleus map becomes uint8 before resizing and the cell
    map after, in the reference's order.
    """
    top, left, h, w = box
    grid = _label_grid(shape, label_scale)
    nuclei = np.ascontiguousarray(nuclei_prob[:, top : top + h, left : left + w].transpose(1, 2, 0))
    cell = np.ascontiguousarray(cell_prob[:, top : top + h, left : left + w].transpose(1, 2, 0))
    nuclei[..., 0] = 0
    cell[..., 0] = 0
    nuclei = _to_uint8(nuclei)
    nuclei = cv2.resize(nuclei, grid[::-1], interpolation=cv2.INTER_AREA)
    cell = _to_uint8(cv2.resize(cell, grid[::-1], interpolation=cv2.INTER_AREA))
    return nuclei, cell


def _label_grid(shape: tuple[int, int], label_scale: float) -> tuple[int, int]:
    k = REFERENCE_SIDE * label_scale / max(shape)
    return max(1, round(shape[0] * k)), max(1, round(shape[1] * k))


def _to_uint8(prob: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)


class _InlineExecutor(Executor):
    """Runs submitted work at once (one worker: no process pool)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)
        return future


class HpaUnetSegmenter(Segmenter):
    """Segmenter with the HPA nucleus and cell networks.

    Parameters
    ----------
    nuclei_model, cell_model : path or nn.Module
        Published weight files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth`` or the
        2-channel ``dpn_unet_cell_v2.pth``), state_dict files, or ready :class:`DPNUnet` modules.
    two_channel : bool
        The cell model is the 2-channel one: its ER input is zero.
    scale_factor : float
        Field shrink factor before the networks (HPA: 0.25).
    label_scale : float
        ``label_cell`` resolution relative to a 2048-px field (the reference: 1.0 for training
        masks, 0.5 for test masks; 0.5 is 4× cheaper).
    batch_size : int
        Fields per network forward.
    device : str, optional
        ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default CUDA when available.
    workers : int
        Processes running ``label_cell`` (1: in this process).
    label_options : dict, optional
        Keyword arguments of :func:`label_cell` (the upstream quirk switches).
    """

    name = "hpa-unet"
    batched = True

    def __init__(
        self,
        nuclei_model: str | Path | nn.Module | None = None,
        cell_model: str | Path | nn.Module | None = None,
        *,
        two_channel: bool = False,
        scale_factor: float = 0.25,
        label_scale: float = 0.5,
        batch_size: int = 4,
        device: str | torch.device | None = None,
        workers: int = 1,
        label_options: dict[str, Any] | None = None,
    ) -> None:
        if nuclei_model is None or cell_model is None:
            which = "nuclei" if nuclei_model is None else "cell"
            raise InputError(
                f"the hpa-unet method needs --{which}-model; "
                + missing_weights_message(Path("(not given)"))
            )
        if not scale_factor > 0 or not label_scale > 0:
            raise ValueError(f"scale factors must be positive, got {scale_factor}, {label_scale}")
        if batch_size < 1 or workers < 1:
            raise ValueError(f"batch_size and workers must be >= 1, got {batch_size}, {workers}")
        self.device = pick_device(device)
        self.nuclei_net = build_network(nuclei_model, self.device)
        self.cell_net = (
            self.nuclei_net
            if cell_model is nuclei_model
            else build_network(cell_model, self.device)
        )
        self.two_channel = two_channel
        self.scale_factor = scale_factor
        self.label_scale = label_scale
        self.batch_size = batch_size
        self.workers = workers
        self.label_options = dict(label_options or {})
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            if self.workers == 1:
                self._pool = _InlineExecutor()
            else:
                # spawn: a forked copy of a process holding CUDA state is unsafe.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        """Stop the post-processing workers."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> HpaUnetSegmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def segment(self, image: np.ndarray) -> SegmentationResult:
        return self.segment_batch([image])[0]

    def network_inputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """(nucleus input, cell input, crop box) of one RGBY field."""
        image = check_image(image)
        blue = image[..., 2]
        er = np.zeros_like(blue) if self.two_channel else image[..., 3]
        nuclei_x, box = prepare_input(np.dstack([blue, blue, blue]), self.scale_factor)
        cell_x, _ = prepare_input(np.dstack([image[..., 0], er, blue]), self.scale_factor)
        return nuclei_x, cell_x, box

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        prepared = [self.network_inputs(image) for image in images]
        shapes = [tuple(np.shape(image)[:2]) for image in images]
        # Fields of one padded size share a forward; sizes may differ within a call.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (nuclei_x, _, _) in enumerate(prepared):
            groups.setdefault(nuclei_x.shape, []).append(i)
        pool = self._executor()
        futures: dict[int, Future] = {}
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                nuclei_p = run_network(
                    self.nuclei_net, [prepared[i][0] for i in chunk], self.batch_size, self.device
                )
                cell_p = run_network(
                    self.cell_net, [prepared[i][1] for i in chunk], self.batch_size, self.device
                )
                for i, n_p, c_p in zip(chunk, nuclei_p, cell_p, strict=True):
                    n_map, c_map = restore_maps(
                        n_p, c_p, prepared[i][2], shapes[i], self.label_scale
                    )
                    # Post-processing (torch-free module, cheap to start in a worker) overlaps the next batch's forward when workers > 1.
                    futures[i] = pool.submit(
                        label_cell_at_shape,
                        n_map,
                        c_map,
                        shapes[i],
                        self.label_scale,
                        self.label_options,
                    )
        return [futures[i].result() for i in range(len(images))]
