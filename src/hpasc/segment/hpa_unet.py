"""Segmentation with the HPA-Cell-Segmentation networks (nucleus and cell DPN-UNets).

A :mod:`preset <hpasc.segment.presets>` prepares the network inputs and restores the outputs
as its reference does (``hpacellseg``: HPA's ``CellSegmentator``, the default; ``pfcell-2021``:
the 7th-place pipeline; ``fast``: hpasc's cheaper variant). The networks run in batches on the
fastest device; pre-processing and :func:`~hpasc.segment.label_cell.label_cell` run in a pool of
CPU processes that works while the networks do, and the label maps are resized back to the
field (nearest neighbour, like OpenCV's ``INTER_NEAREST_EXACT``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpasc.errors import InputError
from hpasc.segment.base import SegmentationResult, Segmenter, check_image
from hpasc.segment.dpn_unet import DPNUnet
from hpasc.segment.hpa_weights import load_weights, missing_weights_message
from hpasc.segment.presets import DEFAULT_PRESET, Box, Preset, get_preset, label_field


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
        2-channel ``dpn_unet_cell_v2.pth``), state_dict files, or ready :class:`DPNUnet` modules
        (any module mapping a (B, 3, h, w) batch to (B, 3, h, w) logits).
    preset : str
        ``hpacellseg`` (default), ``pfcell-2021`` or ``fast``; see :mod:`hpasc.segment.presets`.
    two_channel : bool
        The cell model is the 2-channel one: its ER input is zero.
    scale_factor : float, optional
        Field shrink factor before the networks (``hpacellseg`` and ``fast``: 0.25).
    label_scale : float, optional
        ``label_cell`` resolution relative to a 2048-px field. Default: the preset's
        (``hpacellseg``: the field's own resolution with HPA's constants, as upstream;
        ``pfcell-2021``: 1.0, its training masks, 0.5 for its test masks; ``fast``: 0.5).
    batch_size : int
        Fields per network forward.
    device : str, optional
        ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default CUDA when available.
    workers : int
        Processes running the pre-processing and ``label_cell`` (1: in this process).
    label_options : dict, optional
        Keyword arguments of :func:`label_cell` (the upstream quirk switches, e.g.
        ``uint8_labels=True`` for the original's label wrap above 255 cells).
    """

    name = "hpa-unet"
    batched = True

    def __init__(
        self,
        nuclei_model: str | Path | nn.Module | None = None,
        cell_model: str | Path | nn.Module | None = None,
        *,
        preset: str = DEFAULT_PRESET,
        two_channel: bool = False,
        scale_factor: float | None = None,
        label_scale: float | None = None,
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
        if batch_size < 1 or workers < 1:
            raise ValueError(f"batch_size and workers must be >= 1, got {batch_size}, {workers}")
        try:
            self.preset: Preset = get_preset(
                preset, label_scale=label_scale, scale_factor=scale_factor
            )
        except ValueError as exc:
            raise InputError(f"--preset {preset}: {exc}") from None
        self.device = pick_device(device)
        self.nuclei_net = build_network(nuclei_model, self.device)
        self.cell_net = (
            self.nuclei_net
            if cell_model is nuclei_model
            else build_network(cell_model, self.device)
        )
        self.two_channel = two_channel
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
        """Stop the CPU workers."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> HpaUnetSegmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def segment(self, image: np.ndarray) -> SegmentationResult:
        return self.segment_batch([image])[0]

    def network_inputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, Box]:
        """(nucleus input, cell input, field box) of one RGBY field, as the preset makes them."""
        return self.preset.prepare(check_image(image), self.two_channel)

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        pool = self._executor()
        images = [check_image(image) for image in images]
        shapes = [image.shape[:2] for image in images]
        # Every field's pre-processing is queued first: the pool prepares later fields while
        # the networks run on earlier ones, then labels them while later batches run.
        prepared = [pool.submit(self.preset.prepare, im, self.two_channel) for im in images]
        # Fields of one network size share a forward; sizes may differ within a call.
        waiting: dict[tuple[int, ...], list[int]] = {}
        labelled: dict[int, Future] = {}
        for i, future in enumerate(prepared):
            group = waiting.setdefault(future.result()[0].shape, [])
            group.append(i)
            if len(group) == self.batch_size:
                self._forward(group, prepared, shapes, labelled)
                group.clear()
        for group in waiting.values():
            if group:
                self._forward(group, prepared, shapes, labelled)
        return [labelled[i].result() for i in range(len(images))]

    def _forward(
        self,
        chunk: list[int],
        prepared: list[Future],
        shapes: list[tuple[int, int]],
        labelled: dict[int, Future],
    ) -> None:
        """Run both networks on the fields ``chunk`` and queue the label step of each."""
        inputs = [prepared[i].result() for i in chunk]
        nuclei_p = run_network(
            self.nuclei_net, [x[0] for x in inputs], self.batch_size, self.device
        )
        cell_p = run_network(self.cell_net, [x[1] for x in inputs], self.batch_size, self.device)
        for i, (_, _, box), n_p, c_p in zip(chunk, inputs, nuclei_p, cell_p, strict=True):
            labelled[i] = self._executor().submit(
                label_field, self.preset, n_p, c_p, box, shapes[i], self.label_options
            )
