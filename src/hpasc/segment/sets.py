"""Segment every field of an image store into a mask store (``hpasc segment``).

Per-field methods (classical, cellpose) run one field per task in a pool of ``workers``
processes. Batched methods (hpa-unet: ``Segmenter.batched``) run in this process so that fields
share network forwards on the device; they are given ``workers`` for their own CPU pool (the
``label_cell`` post-processing). Both go through
:func:`hpasc.runner.run_fields`: sharding, resume (fields whose masks exist are skipped), a
progress bar and the error policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from hpasc.errors import InputError
from hpasc.io.images import EIGHT_BIT_RULES, encode_png, list_field_ids, read_field
from hpasc.io.store import Store, open_output
from hpasc.options import merged, option, validate
from hpasc.runner import RunSummary, guard_output, parse_shard, run_fields, shard_ids
from hpasc.segment import (
    SEGMENTERS,
    SegmentationResult,
    Segmenter,
    get_segmenter,
    segmenter_class,
)
from hpasc.segment.presets import PRESETS

StoreLike = Store | str | os.PathLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentOptions:
    """How a set is segmented (:func:`segment_set`)."""

    method: str = option(
        "classical",
        "classical (no weights), hpa-unet or cellpose.",
        choices=lambda: tuple(SEGMENTERS),  # a registry: segmenters may be added
        flag="--method -m",
    )
    preset: str | None = option(
        None,
        "hpa-unet pipeline: hpacellseg (default; HPA's CellSegmentator), pfcell-2021 "
        "(7th place: every field at 512 px) or fast (cv2 resampling, label scale 0.5).",
        choices=tuple(PRESETS),
        records=False,  # recorded among method_options, where the segmenter takes it
    )
    eight_bit: str = option(
        "ceil257",
        "16-bit → 8-bit: ceil257 (HPA's rule) or opencv (read as cv2.imread(path, "
        "IMREAD_GRAYSCALE): the 7th place).",
        choices=EIGHT_BIT_RULES,
    )
    nuclei_out: str | None = option(
        None, "Also write nucleus masks (<id>.png) to this store.", output=True, records=False
    )
    workers: int = option(
        1,
        "Processes: fields in parallel (hpa-unet: label_cell).",
        min=1,
        records=False,
        flag="--workers -j",
    )
    batch_size: int = option(4, "Fields per network forward (hpa-unet).", min=1, records=False)
    method_options: dict[str, Any] = option(
        {},
        "Keyword arguments of the segmenter (e.g. working_size, nuclei_model, label_scale).",
        records=False,  # recorded by segment_set, without the device
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.preset is not None and self.method != "hpa-unet":
            raise InputError(
                f"--preset {self.preset!r} (preset): only for --method hpa-unet, not {self.method}"
            )

    def segmenter_options(self) -> dict[str, Any]:
        """The keyword arguments of the segmenter: ``method_options`` and the ``preset``."""
        out = dict(self.method_options)
        if self.preset is not None:
            out["preset"] = self.preset
        return out


#: Network batches handed to a batched segmenter per call when it has CPU workers.
LOOKAHEAD_BATCHES = 4


def mask_name(field_id: str) -> str:
    """File name of a field's mask in a mask store."""
    return f"{field_id}.png"


def _encode_mask(mask: np.ndarray) -> bytes:
    if mask.dtype != np.uint16 and mask.size and int(mask.max()) > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(mask.max())} objects do not fit a 16-bit mask PNG")
    return encode_png(mask.astype(np.uint16, copy=False))


def _encode(result: SegmentationResult, with_nuclei: bool) -> tuple[bytes, bytes | None]:
    return _encode_mask(result.cells), _encode_mask(result.nuclei) if with_nuclei else None


@functools.cache
def _segmenter_in_process(method: str, options: tuple, pid: int) -> Segmenter:
    # One segmenter per worker process (a Cellpose model loads once, not once per field).
    return get_segmenter(method, **dict(options))


def _segment_one(
    images: Store, method: str, options: tuple, with_nuclei: bool, eight_bit: str, field_id: str
) -> tuple[bytes, bytes | None]:
    segmenter = _segmenter_in_process(method, options, os.getpid())
    image = read_field(images, field_id, eight_bit=eight_bit)
    return _encode(segmenter.segment(image), with_nuclei)


class _BatchedFields:
    """``fn(field_id)`` for :func:`run_fields` that segments the next ``batch_size`` pending
    fields together on the first call and hands out the cached results after.

    ``run_fields`` calls it in the order of ``pending`` (sorted ids, sharded, skips removed), so
    every batch is a run of consecutive pending fields. A field that cannot be read fails alone.
    """

    def __init__(
        self,
        images: Store,
        segmenter: Segmenter,
        pending: list[str],
        batch_size: int,
        with_nuclei: bool,
        eight_bit: str,
    ) -> None:
        self.images = images
        self.eight_bit = eight_bit
        self.segmenter = segmenter
        self.position = {field_id: i for i, field_id in enumerate(pending)}
        self.pending = pending
        self.batch_size = batch_size
        self.with_nuclei = with_nuclei
        self.done: dict[str, tuple[bytes, bytes | None] | BaseException] = {}

    def __call__(self, field_id: str) -> tuple[bytes, bytes | None]:
        if field_id not in self.done:
            start = self.position[field_id]
            self._run(self.pending[start : start + self.batch_size])
        outcome = self.done.pop(field_id)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _run(self, batch: list[str]) -> None:
        read: dict[str, np.ndarray] = {}
        for field_id in batch:
            try:
                read[field_id] = read_field(self.images, field_id, eight_bit=self.eight_bit)
            except Exception as exc:
                self.done[field_id] = exc
        if not read:
            return
        try:
            results = self.segmenter.segment_batch(list(read.values()))
        except Exception:
            # Find the field that breaks the batch: segment them one by one.
            results = []
            for field_id, image in list(read.items()):
                try:
                    results.append(self.segmenter.segment(image))
                except Exception as exc:
                    self.done[field_id] = exc
                    del read[field_id]
        for field_id, result in zip(read, results, strict=True):
            self.done[field_id] = _encode(result, self.with_nuclei)


@contextlib.contextmanager
def _open_output(store: StoreLike | None) -> Iterator[Store | None]:
    # Closing commits zip outputs, also after an error: finished masks are kept for resume.
    if store is None:
        yield None
        return
    with open_output(store) as out:
        yield out


def segment_set(
    images: StoreLike,
    out: StoreLike,
    options: SegmentOptions = SegmentOptions(),
    *,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
    on_error: str = "stop",
    progress: bool = True,
    **overrides: Any,
) -> RunSummary:
    """Write the cell mask ``OUT/<id>.png`` (uint16 PNG, any number of cells up to 65,535) of
    every field in ``images``, and the nucleus masks to ``options.nuclei_out`` when given.

    Parameters
    ----------
    images, out : stores (folder, ``x.zip[/sub]`` or URL) or their locations
    options : :class:`SegmentOptions`: ``method`` (one of :data:`hpasc.segment.SEGMENTERS`),
        ``workers`` (processes: fields in parallel for classical and cellpose, ``label_cell``
        workers for hpa-unet), ``batch_size`` (fields per network forward, hpa-unet),
        ``method_options`` (keyword arguments of the segmenter, e.g. ``working_size``,
        ``nuclei_model``), ``preset`` (hpa-unet), ``eight_bit`` (how 16-bit channels become 8
        bits, :func:`hpasc.io.images.read_field`: ``"ceil257"`` or ``"opencv"``, the 7th place)
    shard : ``(i, n)`` or ``"i/n"``: only the sorted ids ``i, i+n, ...``
    overwrite : redo fields whose masks exist (default: skip them, i.e. resume)
    on_error : ``"stop"`` or ``"skip"`` (failures logged to ``OUT/errors.csv``)
    **overrides : fields of ``options`` to replace (``method="hpa-unet"``)
    """
    o = merged(SegmentOptions, options, overrides)
    method, eight_bit, nuclei_out = o.method, o.eight_bit, o.nuclei_out
    workers, batch_size = o.workers, o.batch_size
    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error must be stop or skip, got '{on_error}'")
    if isinstance(shard, str):
        shard = parse_shard(shard)
    source = images if isinstance(images, Store) else Store(images)
    ids = list_field_ids(source)
    if not ids:
        raise InputError(f"no images (<id>_<channel>.png) found in {source.url}")
    options = o.segmenter_options()
    with_nuclei = nuclei_out is not None

    with _open_output(out) as dest, _open_output(nuclei_out) as nuclei_dest:
        skip = _guard(dest, nuclei_dest, source, method, options, eight_bit, ids, shard, overwrite)

        def write(field_id: str, encoded: tuple[bytes, bytes | None]) -> None:
            cells_png, nuclei_png = encoded
            # Nuclei first: a cell mask on disk then means the field is complete.
            if nuclei_dest is not None and nuclei_png is not None:
                nuclei_dest.write_bytes(mask_name(field_id), nuclei_png)
            dest.write_bytes(mask_name(field_id), cells_png)

        common: dict[str, Any] = dict(
            shard=shard,
            skip=skip,
            on_error=on_error,
            errors_csv=dest,
            desc=f"segment ({method})",
            on_result=write,
            progress=progress,
        )
        if not segmenter_class(method).batched:
            fn = functools.partial(
                _segment_one, source, method, tuple(sorted(options.items())), with_nuclei, eight_bit
            )
            return run_fields(ids, fn, workers=workers, **common)
        pending = sorted(set(ids))
        if shard is not None:
            pending = shard_ids(pending, *shard)
        if skip is not None:
            pending = [i for i in pending if not skip(i)]
        segmenter = get_segmenter(method, batch_size=batch_size, workers=workers, **options)
        # With a worker pool, several batches go to the segmenter at once, so the pool labels
        # one batch while the networks run on the next.
        fields_per_call = batch_size * (LOOKAHEAD_BATCHES if workers > 1 else 1)
        try:
            fn = _BatchedFields(source, segmenter, pending, fields_per_call, with_nuclei, eight_bit)
            return run_fields(ids, fn, workers=1, **common)
        finally:
            segmenter.close()


def _guard(
    dest: Store,
    nuclei_dest: Store | None,
    source: Store,
    method: str,
    options: dict[str, Any],
    eight_bit: str,
    ids: list[str],
    shard: tuple[int, int] | None,
    overwrite: bool,
) -> Callable[[str], bool]:
    """Resume: a field is done when its mask (and nucleus mask, if asked for) exists, in
    outputs made with this method and options from these images (:func:`guard_output`)."""
    mine = ids if shard is None else shard_ids(ids, *shard)
    # where the network runs does not change the masks: a run may resume on another device
    params = {
        "method": method,
        "options": {k: v for k, v in options.items() if k != "device"},
        "eight_bit": eight_bit,
    }
    inputs = {"images": source}
    done = [
        guard_output(
            store, kind, params, inputs, mine, lambda i: [mask_name(i)], overwrite=overwrite
        )
        for store, kind in ((dest, "segment"), (nuclei_dest, "segment nuclei"))
        if store is not None
    ]
    return lambda field_id: all(d(field_id) for d in done)
