"""Dataset preparation: resize image and mask sets, crop every cell, tabulate cells.

Array functions (pure, no files): :func:`resize_image`, :func:`resize_mask`,
:func:`crop_cells`, :func:`cell_table`. Set functions (store to store, through
:func:`hpasc.runner.run_fields`: workers, shards, resume, error policy): :func:`resize_set`,
:func:`crop_set`. Crop records: :func:`write_crops` / :func:`read_crops`.

Geometry and channel order of the crops follow the 7th-place method (method spec §2.4); the
differences are listed in ``docs/prepare.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from hpasc.errors import InputError
from hpasc.io import cropset
from hpasc.io.images import (
    CHANNELS,
    EIGHT_BIT_RULES,
    encode_png,
    list_field_ids,
    list_mask_ids,
    read_field,
    read_mask,
    to_uint8,
)
from hpasc.io.store import Store, open_output
from hpasc.options import REQUIRED, merged, option, recorded, validate
from hpasc.runner import RunSummary, guard_output, parse_shard, run_fields, shard_ids

INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST_EXACT,
    "cubic": cv2.INTER_CUBIC,
}
StoreLike = Store | str | os.PathLike
_WORKERS_HELP = "Worker processes."


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResizeOptions:
    """How a set is resized (:func:`resize_set`)."""

    size: int = option(REQUIRED, "Output side S (fields become S×S).", min=1, flag="--size -s")
    masks: bool = option(
        False,
        "Resize instance masks <id>.png (exact nearest neighbour).",
        flag="--masks",
        records=False,  # part of the verb: 'resize masks' / 'resize images'
    )
    interpolation: str = option(
        "auto",
        "auto (area when shrinking, linear when enlarging), area, linear (the 7th "
        "place's cv2.resize default), nearest, cubic.",
        choices=("auto", *INTERPOLATIONS),
    )
    dtype: str | None = option(
        None,
        "uint8: convert 16-bit images to 8 bits (default: keep bit depth).",
        choices=("uint8",),
    )
    eight_bit: str = option(
        "ceil257",
        "16-bit → 8-bit: ceil257 (HPA's rule, after the resize) or opencv (read as "
        "cv2.imread(path, IMREAD_GRAYSCALE), before the resize: the 7th place).",
        choices=EIGHT_BIT_RULES,
    )
    workers: int = option(1, _WORKERS_HELP, min=1, records=False, flag="--workers -j")

    def __post_init__(self) -> None:
        validate(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CropOptions:
    """How cells are cropped (:func:`crop_set`)."""

    size: int = option(192, "Crop side S (8 planes S×S/cell).", min=2, flag="--size -s")
    orig_masks: str | None = option(
        None,
        "Masks at original resolution: adds *_orig columns (area, bbox) to the cell table.",
        path=True,
        records=False,  # an input: recorded by its fingerprint
    )
    workers: int = option(1, _WORKERS_HELP, min=1, records=False, flag="--workers -j")

    def __post_init__(self) -> None:
        validate(self)


CELL_TABLE = "cells.parquet"
_BBOX = ["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]
_GEOMETRY = ["area", *_BBOX, "centroid_y", "centroid_x"]
_TABLE_DTYPE = np.dtype(
    [("cell_id", "<i4")]
    + [(c, "<f8") for c in _GEOMETRY + [f"{c}_orig" for c in _GEOMETRY]]
    + [("touches_edge", "?")]
)


# --------------------------------------------------------------------------- arrays


def _target_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def resize_image(
    img: np.ndarray, size: int | tuple[int, int], interpolation: str = "auto"
) -> np.ndarray:
    """Resize an image (H×W or H×W×C, uint8 or uint16) to S×S (or ``size=(h, w)``).

    Non-square inputs are stretched to the square target, as in the reference pipeline.

    Parameters
    ----------
    img : ndarray
        Image; the dtype is kept.
    size : int or (int, int)
        Target side S, or (height, width).
    interpolation : {"auto", "area", "linear", "cubic", "nearest"}
        ``"auto"``: area averaging when the image shrinks on both axes (no aliasing of fine
        structure, unlike the reference's bilinear), bilinear otherwise.

    Returns
    -------
    ndarray of shape (h, w[, C]), same dtype.
    """
    h, w = _target_hw(size)
    if interpolation == "auto":
        interpolation = "area" if h <= img.shape[0] and w <= img.shape[1] else "linear"
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be auto or one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
        )
    if img.shape[:2] == (h, w):
        return img.copy()
    out = cv2.resize(img, (w, h), interpolation=INTERPOLATIONS[interpolation])
    # OpenCV drops a trailing channel axis of length 1.
    return out.reshape((h, w, *img.shape[2:]))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an instance mask with exact nearest neighbour: labels are never blended.

    Returns a uint16 mask (uint8 input stays uint8). Labels above 65535 raise ValueError. A cell
    smaller than the new pixel grid may vanish; the other labels keep their values.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.dtype not in (np.uint8, np.uint16):
        top = int(mask.max(initial=0))
        if top > 65535 or int(mask.min(initial=0)) < 0:
            raise ValueError(f"mask labels must lie in 0..65535, got {mask.min()}..{top}")
        mask = mask.astype(np.uint16)
    h, w = _target_hw(size)
    if mask.shape == (h, w):
        return mask.copy()
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def _labels(mask: np.ndarray) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.dtype.kind not in "ui":
        raise ValueError(f"mask must hold integer labels, got dtype {mask.dtype}")
    if mask.dtype.kind == "i" and mask.size and int(mask.min()) < 0:
        raise ValueError(f"mask labels must be >= 0, got {mask.min()}")
    return mask


def _cell_slices(mask: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    """(cell id, bounding-box slices) of every label present, ascending (one pass)."""
    objects = ndimage.find_objects(_labels(mask))
    return [(k + 1, sl) for k, sl in enumerate(objects) if sl is not None]


def _geometry(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell ids and, per cell, area, bbox [y0, x0, y1, x1) and centroid (y, x) at mask scale."""
    cells = _cell_slices(mask)
    ids = np.array([k for k, _ in cells], dtype=np.int32)
    geo = np.zeros((len(cells), len(_GEOMETRY)), dtype=np.float64)
    for row, (k, (sy, sx)) in enumerate(cells):
        geo[row] = _geometry_row(sy, sx, *np.nonzero(mask[sy, sx] == k))
    return ids, geo


def _geometry_row(sy: slice, sx: slice, ys: np.ndarray, xs: np.ndarray) -> tuple:
    """Area, bbox and centroid of one cell from its pixels (``ys, xs`` inside its bbox)."""
    return (
        ys.size,
        sy.start,
        sx.start,
        sy.stop,
        sx.stop,
        sy.start + ys.mean(),
        sx.start + xs.mean(),
    )


def cell_table(
    mask: np.ndarray,
    image_id: str = "",
    *,
    orig_shape: tuple[int, int] | None = None,
    orig_mask: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per cell of an instance mask: area, bounding box, centroid, edge contact.

    Parameters
    ----------
    mask : ndarray (H, W) of int
        Instance labels, 0 = background.
    image_id : str
        Written to the ``image_id`` column.
    orig_shape : (H0, W0), optional
        Size of the original field: adds ``*_orig`` columns scaled from mask resolution
        (area × H0·W0 / (H·W); bbox edges × H0/H, W0/W; centroids as pixel centres).
    orig_mask : ndarray (H0, W0), optional
        The mask at original resolution: ``*_orig`` columns are measured on it (exact); a cell
        absent there gets NaN.

    Returns
    -------
    DataFrame with columns ``image_id, cell_id, area, bbox_y0, bbox_x0, bbox_y1, bbox_x1,
    centroid_y, centroid_x, touches_edge`` (bbox half-open, in pixels; centroid = mean pixel
    coordinate) and, with ``orig_shape`` or ``orig_mask``, the same geometry suffixed ``_orig``.
    """
    rec = _table_records(mask, orig_shape=orig_shape, orig_mask=orig_mask)
    return _table_frame(rec, image_id, orig=orig_shape is not None or orig_mask is not None)


def _table_records(
    mask: np.ndarray,
    orig_shape: tuple[int, int] | None = None,
    orig_mask: np.ndarray | None = None,
    geometry: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The cell table of one mask as a structured array (how crop records store it).

    ``geometry``: the mask's :func:`_geometry` when the caller has it already.
    """
    ids, geo = _geometry(mask) if geometry is None else geometry
    rec = np.zeros(len(ids), dtype=_TABLE_DTYPE)
    rec["cell_id"] = ids
    for j, name in enumerate(_GEOMETRY):
        rec[name] = geo[:, j]
        rec[f"{name}_orig"] = np.nan
    h, w = mask.shape
    rec["touches_edge"] = (
        (rec["bbox_y0"] == 0)
        | (rec["bbox_x0"] == 0)
        | (rec["bbox_y1"] == h)
        | (rec["bbox_x1"] == w)
    )
    if orig_mask is not None:
        oids, ogeo = _geometry(orig_mask)
        where = {k: i for i, k in enumerate(oids)}
        for row, k in enumerate(ids):
            if k in where:
                for j, name in enumerate(_GEOMETRY):
                    rec[f"{name}_orig"][row] = ogeo[where[k], j]
    elif orig_shape is not None:
        fy, fx = orig_shape[0] / h, orig_shape[1] / w
        rec["area_orig"] = rec["area"] * (fy * fx)
        for axis, f in (("y", fy), ("x", fx)):
            rec[f"bbox_{axis}0_orig"] = rec[f"bbox_{axis}0"] * f  # edges scale as they are
            rec[f"bbox_{axis}1_orig"] = rec[f"bbox_{axis}1"] * f
            # pixel centres: x at mask scale covers [x, x+1), centre x + 0.5
            rec[f"centroid_{axis}_orig"] = (rec[f"centroid_{axis}"] + 0.5) * f - 0.5
    return rec


def _table_frame(rec: np.ndarray, image_id: Any, orig: bool | None = None) -> pd.DataFrame:
    """Structured records → DataFrame; ``orig=None`` adds ``*_orig`` columns if any is known.

    ``image_id``: one id for all rows, or one per row.
    """
    ids = [image_id] * len(rec) if isinstance(image_id, str) else list(image_id)
    frame = pd.DataFrame(
        {
            "image_id": pd.Series(ids, dtype=object),
            "cell_id": rec["cell_id"].astype(np.int32),
            "area": rec["area"].astype(np.int64),
            **{c: rec[c].astype(np.int64) for c in _BBOX},
            "centroid_y": rec["centroid_y"],
            "centroid_x": rec["centroid_x"],
            "touches_edge": rec["touches_edge"].astype(bool),
        }
    )
    if orig is None:
        orig = bool(len(rec)) and not np.isnan(rec["area_orig"]).all()
    if orig:
        for name in _GEOMETRY:
            frame[f"{name}_orig"] = rec[f"{name}_orig"]
    return frame


def crop_cells(
    image: np.ndarray, mask: np.ndarray, size: int = 192
) -> tuple[np.ndarray, np.ndarray]:
    """Eight S×S planes per cell: a fixed-scale "center" window and a resized "whole" view.

    For every cell (ids ascending, ≥ 1 pixel), each channel is masked to the cell (other cells and
    background are 0), then:

    * **center**: the S×S window whose rows are ``[cy - S//2 + 1, cy + S//2 + 1)`` (columns
      likewise), zero outside the field, where (cy, cx) is the blue-weighted centroid truncated
      to int (the geometric centroid when the cell has no blue signal);
    * **whole**: the cell's bounding box (h×w) resized bilinearly by r = S / max(h, w) to
      (int(h·r), int(w·r)) (at least 1 px) and pasted centred on a zero S×S canvas.

    Parameters
    ----------
    image : ndarray (H, W, 4)
        RGBY field (channels red, green, blue, yellow); uint16 is converted to uint8 first.
    mask : ndarray (H, W) of int
        Instance labels at the image's resolution.
    size : int
        S.

    Returns
    -------
    crops : ndarray (n, 8, S, S) uint8
        Planes ordered red-center, red-whole, green-center, green-whole, blue-center,
        blue-whole, yellow-center, yellow-whole.
    cell_ids : ndarray (n,) int32
    """
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"image must be H×W×4 (RGBY), got shape {image.shape}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    crops, ids, _ = _crop_cells(to_uint8(image), mask, size, _cell_slices(mask))
    return crops, ids


def _crop_cells(
    image: np.ndarray, mask: np.ndarray, size: int, cells: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`crop_cells` of a checked uint8 field, given the mask's :func:`_cell_slices`.

    Also returns the cells' :func:`_geometry` rows, measured on the same pixels (one pass).
    """
    crops = np.zeros((len(cells), 8, size, size), dtype=np.uint8)
    ids = np.array([k for k, _ in cells], dtype=np.int32)
    geo = np.zeros((len(cells), len(_GEOMETRY)), dtype=np.float64)
    height, width = mask.shape
    half = size // 2
    for n, (k, (sy, sx)) in enumerate(cells):
        inside = mask[sy, sx] == k
        box = image[sy, sx]
        cell = cv2.bitwise_and(box, box, mask=inside.view(np.uint8))  # h×w×4, 0 outside the cell
        ys, xs = np.nonzero(inside)
        geo[n] = _geometry_row(sy, sx, ys, xs)
        # boolean indexing walks the pixels in the order of nonzero(): same sums as the reference
        cy, cx = _weighted_centre(ys, xs, box[..., 2][inside], sy.start, sx.start)

        # center: window [cy-half+1, cy-half+1+S) ∩ field; only the bbox can be non-zero.
        y0, x0 = cy - half + 1, cx - half + 1
        top, bottom = max(y0, sy.start, 0), min(y0 + size, sy.stop, height)
        left, right = max(x0, sx.start, 0), min(x0 + size, sx.stop, width)
        if top < bottom and left < right:
            src = cell[top - sy.start : bottom - sy.start, left - sx.start : right - sx.start]
            crops[n, 0::2, top - y0 : bottom - y0, left - x0 : right - x0] = src.transpose(2, 0, 1)

        # whole: bbox scaled so that its long side is S, centred.
        h, w = inside.shape
        r = size / max(h, w)
        nh, nw = max(1, int(h * r)), max(1, int(w * r))
        resized = cv2.resize(cell, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, 4)
        oy, ox = (size - nh) // 2, (size - nw) // 2
        crops[n, 1::2, oy : oy + nh, ox : ox + nw] = resized.transpose(2, 0, 1)
    return crops, ids, geo


def _weighted_centre(
    ys: np.ndarray, xs: np.ndarray, blue: np.ndarray, y0: int, x0: int
) -> tuple[int, int]:
    """Blue-weighted centroid of the pixels ``ys, xs`` of a bbox (``blue``: their blue values),
    truncated, computed as the reference does (same float order)."""
    b = blue.astype(np.float64)
    total = b.sum()
    if total == 0:
        # The reference would return (0, 0) here (a window at the field's corner).
        return int(y0 + ys.mean()), int(x0 + xs.mean())
    wgt = b / (total + 1e-6)
    return int((wgt * (ys + y0)).sum()), int((wgt * (xs + x0)).sum())


# --------------------------------------------------------------------------- crop records
# The record format lives in hpasc.io.cropset; these wrappers accept a store or its URL.


def encode_crops(crops: np.ndarray, cell_ids: np.ndarray, cells: np.ndarray | None = None) -> bytes:
    """One crop record (:func:`hpasc.io.cropset.encode_record`)."""
    return cropset.encode_record(crops, cell_ids, cells)


def record_name(field_id: str) -> str:
    """Name of a field's crop record inside a crop set (``<id>.crops``)."""
    return cropset.record_name(field_id)


def write_crops(store: Store, field_id: str, crops: np.ndarray, cell_ids: np.ndarray) -> None:
    """Write one crop record ``<id>.crops`` (atomic, as every store write)."""
    cropset.write_record(_open(_url(store)), field_id, crops, cell_ids)


def read_crops(store: Store | str, field_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A field's crops (n, 8, S, S) uint8 and cell ids (n,) int32 from a crop set."""
    record = cropset.read_record(_open(_url(store)), field_id)
    return record.crops, record.cell_ids


def list_crop_ids(store: Store | str) -> list[str]:
    """Field ids that have a crop record in a crop set, sorted."""
    return cropset.list_ids(_open(_url(store)))


def _stored_tables(store: Store, ids: list[str]) -> dict[str, np.ndarray]:
    """The cell-table records kept in the crop records of ``ids`` (no crop is decoded)."""
    tables = {}
    for field_id in ids:
        rows = cropset.read_table(store, field_id)
        if rows is None:
            raise InputError(
                f"crop record {record_name(field_id)} in {store} has no cell table; "
                "re-run `hpasc crop --overwrite`"
            )
        tables[field_id] = rows
    return tables


def _merge_tables(tables: dict[str, np.ndarray], orig: bool | None = None) -> pd.DataFrame:
    """One cell table from per-field records, sorted by (image_id, cell_id)."""
    ids = sorted(tables)
    rec = np.concatenate([tables[i] for i in ids]) if ids else np.zeros(0, _TABLE_DTYPE)
    # Records hold cells in ascending id order, so the rows come out sorted.
    return _table_frame(rec, np.repeat(ids, [len(tables[i]) for i in ids]), orig)


def read_crop_cell_table(store: Store | str, ids: list[str] | None = None) -> pd.DataFrame:
    """The cell table kept in the records of a crop set (all fields, or ``ids``)."""
    store = _open(_url(store))
    return _merge_tables(_stored_tables(store, list_crop_ids(store) if ids is None else ids))


# --------------------------------------------------------------------------- sets


def _url(store: Store | str | os.PathLike) -> str:
    """A picklable description of a store for worker processes (they re-open it)."""
    return str(getattr(store, "url", None) or os.fspath(store))


@functools.cache
def _store_in_process(url: str, pid: int) -> Store:

    return Store(url)


def _open(url: str) -> Store:
    # One Store per url and process: a forked worker builds its own.
    return _store_in_process(url, os.getpid())


def _channel_name(field_id: str, channel: str) -> str:
    return f"{field_id}_{channel}.png"


def _resize_one(
    in_url: str,
    size: int,
    masks: bool,
    interpolation: str,
    dtype: str | None,
    eight_bit: str,
    field_id: str,
) -> dict[str, bytes]:

    src = _open(in_url)
    if masks:
        mask = resize_mask(read_mask(src, field_id), size)
        return {f"{field_id}.png": encode_png(mask.astype(np.uint16, copy=False))}
    out = resize_image(read_field(src, field_id, eight_bit=eight_bit), size, interpolation)
    if dtype == "uint8":
        out = to_uint8(out)
    return {_channel_name(field_id, ch): encode_png(out[..., c]) for c, ch in enumerate(CHANNELS)}


def _output(store: Store | str | os.PathLike):
    """The output store of a verb (:func:`hpasc.io.store.open_output`)."""
    return open_output(_url(store))


def _write_files(store: Store, field_id: str, files: dict[str, bytes]) -> None:
    """Write one field's files: all of them or, when one fails (disk full), none."""
    written = []
    try:
        for name, data in files.items():
            store.write_bytes(name, data)
            written.append(name)
    except BaseException:
        for name in written:
            with contextlib.suppress(Exception):
                store.remove(name)
        raise


def _check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error must be stop or skip, got '{on_error}'")


def resize_set(
    in_store: StoreLike,
    out_store: StoreLike,
    options: ResizeOptions | None = None,
    *,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
    on_error: str = "stop",
    progress: bool = True,
    **overrides: Any,
) -> RunSummary:
    """Resize every field (4 channel PNGs) or, with ``masks``, every mask of a store to S×S.

    Outputs are PNGs named as the inputs (``<id>_<channel>.png`` or ``<id>.png``); images keep
    their bit depth unless ``dtype="uint8"``; masks use exact nearest neighbour. Fields whose
    outputs all exist are skipped unless ``overwrite``.

    ``options`` (:class:`ResizeOptions`, or its fields as keywords: ``size=64``):
    ``interpolation``: see :func:`resize_image` (``"linear"`` is the 7th place's ``cv2.resize``
    default). ``eight_bit``: ``"ceil257"`` resizes 16-bit channels at 16 bits, then (with
    ``dtype="uint8"``) converts with ``ceil(v/257)``; ``"opencv"`` reads every channel as
    ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` does, before the resize (the 7th place), so the
    output is 8-bit.
    """
    o = merged(ResizeOptions, options, overrides)
    _check_on_error(on_error)
    size, masks = o.size, o.masks
    if isinstance(shard, str):
        shard = parse_shard(shard)
    in_url = _url(in_store)
    src = _open(in_url)
    ids = list_mask_ids(src) if masks else list_field_ids(src)
    if not ids:
        kind = "masks (<id>.png)" if masks else "images (<id>_<channel>.png)"
        raise InputError(f"no {kind} found in {in_url}")

    def names(field_id: str) -> list[str]:
        return [f"{field_id}.png"] if masks else [_channel_name(field_id, c) for c in CHANNELS]

    with _output(out_store) as out:
        kind = f"resize {'masks' if masks else 'images'}"
        mine = ids if shard is None else shard_ids(ids, *shard)
        skip = guard_output(
            out, kind, recorded(o), {"input": in_url}, mine, names, overwrite=overwrite
        )
        return run_fields(
            ids,
            functools.partial(
                _resize_one, in_url, size, masks, o.interpolation, o.dtype, o.eight_bit
            ),
            workers=o.workers,
            shard=shard,
            skip=skip,
            on_error=on_error,
            errors_csv=out,
            desc=f"resize {'masks' if masks else 'images'} → {size}",
            on_result=functools.partial(_write_files, out),
            progress=progress,
        )


def _crop_one(
    images_url: str, masks_url: str, orig_url: str | None, size: int, field_id: str
) -> tuple[bytes, np.ndarray]:

    images, masks = _open(images_url), _open(masks_url)
    mask = read_mask(masks, field_id)
    image = read_field(images, field_id)
    if image.shape[:2] != mask.shape:
        raise InputError(
            f"mask {field_id}.png in {masks_url} is {mask.shape[0]}×{mask.shape[1]} but the "
            f"image is {image.shape[0]}×{image.shape[1]}; resize one set to the other's size "
            "(`hpasc resize`, with --masks for masks)"
        )
    orig = read_mask(_open(orig_url), field_id) if orig_url is not None else None
    # the crops and the cell table share one pass over the mask's cells
    crops, ids, geo = _crop_cells(to_uint8(image), mask, size, _cell_slices(mask))
    cells = _table_records(mask, orig_mask=orig, geometry=(ids, geo))
    return encode_crops(crops, ids, cells), cells


def cell_table_name(shard: tuple[int, int] | None) -> str:
    """``cells.parquet``, or ``cells-<i>-of-<n>.parquet`` for shard i of n."""
    return CELL_TABLE if shard is None else f"cells-{shard[0]}-of-{shard[1]}.parquet"


def crop_set(
    images: StoreLike,
    masks: StoreLike,
    out: StoreLike,
    options: CropOptions = CropOptions(),
    *,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
    on_error: str = "stop",
    progress: bool = True,
    **overrides: Any,
) -> RunSummary:
    """Crop every cell of every field: ``OUT/<id>.crops`` records and the cell table.

    Each field's image is decoded once; masks must have the image's resolution. Fields
    without cells get an empty record (n = 0). The cell table (:func:`cell_table`, with
    ``*_orig`` columns measured on ``orig_masks`` when given) is written to
    ``OUT/cells.parquet``, or ``OUT/cells-<i>-of-<n>.parquet`` for a shard; it covers every field
    of the run, skipped ones included (their rows are kept in their records). Running again
    without ``shard`` after all shards finished skips every field and writes the whole
    ``cells.parquet``.

    ``options``: :class:`CropOptions`, or its fields as keywords (``size=64``).
    """
    o = merged(CropOptions, options, overrides)
    _check_on_error(on_error)
    size, orig_masks = o.size, o.orig_masks
    if isinstance(shard, str):
        shard = parse_shard(shard)
    images_url, masks_url = _url(images), _url(masks)
    orig_url = None if orig_masks is None else _url(orig_masks)
    ids = list_field_ids(_open(images_url))
    if not ids:
        raise InputError(f"no images (<id>_<channel>.png) found in {images_url}")
    if shard is not None:
        ids = shard_ids(ids, *shard)

    tables: dict[str, np.ndarray] = {}

    def keep(field_id: str, result: tuple[bytes, np.ndarray]) -> None:
        record, tables[field_id] = result
        dest.write_bytes(record_name(field_id), record)

    with _output(out) as dest:
        inputs = {"images": images_url, "masks": masks_url, "orig_masks": orig_url}
        skip = guard_output(
            dest, "crop", recorded(o), inputs, ids, lambda i: [record_name(i)],
            overwrite=overwrite,
        )  # fmt: skip
        summary = run_fields(
            ids,
            functools.partial(_crop_one, images_url, masks_url, orig_url, size),
            workers=o.workers,
            skip=skip,
            on_error=on_error,
            errors_csv=dest,
            desc=f"crop cells → {size}",
            on_result=keep,
            progress=progress,
        )
        skipped = [i for i in ids if i not in tables and skip(i)]
        tables.update(_stored_tables(dest, skipped))
        table = _merge_tables(tables, orig=True if orig_url is not None else None)
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        dest.write_bytes(cell_table_name(shard), buf.getvalue())
    return summary
