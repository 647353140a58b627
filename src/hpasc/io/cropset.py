"""Crop sets: one record per field, each cell compressed on its own (random access by cell).

A crop set is a store holding one record ``<id>.crops`` per field (also for a field without
cells) and the cell table ``cells.parquet``. A record is::

    b"HPCROPS1" | header length (uint32, little-endian) | header (JSON, UTF-8) | payload

The header names the codec, the crop shape ``[8, S, S]``, the cell ids (ascending) and, for
every cell, where its compressed ``(8, S, S)`` uint8 block lies in the payload, plus the
location and dtype of the field's cell-table rows (stored raw: they are small). Cells are
compressed one by one with LZ4 (:mod:`numcodecs`): the size of the original's Blosc entries
(real crops shrink 3.7×; Zstandard level 1 gives 4.4× at half the speed, zlib 4.5× at a tenth),
encoding at ~1.5 GB/s and decoding at ~5 GB/s, deterministic (same crops, same bytes); one
cell is read by decoding only its block (``docs/performance.md`` has the measurements). Records are written whole through :meth:`Store.write_bytes`, so they are atomic and a
present record means a finished field (resume). ``.crops`` entries are stored uncompressed in
zip stores, so a cell inside a zipped crop set is reached by seeking.

Every reader and writer of crop sets goes through this module.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numcodecs import LZ4

from hpasc.errors import InputError
from hpasc.io.store import Store

__all__ = [
    "EXT",
    "CropRecord",
    "CropReader",
    "RecordIndex",
    "decode_record",
    "encode_record",
    "list_ids",
    "read_cell_ids",
    "read_index",
    "read_record",
    "read_table",
    "record_name",
    "write_record",
]

EXT = ".crops"
_MAGIC = b"HPCROPS1"
_PREFIX = struct.Struct("<8sI")
_VERSION = 1
_CODEC_NAME = "lz4"
_CODEC = LZ4(acceleration=1)
_PLANES = 8


class CropRecord(NamedTuple):
    """A decoded record: crops (n, 8, S, S) uint8, cell ids (n,) int32, cell-table rows or None."""

    crops: np.ndarray
    cell_ids: np.ndarray
    cells: np.ndarray | None


@dataclass(frozen=True)
class RecordIndex:
    """The header of a record: what it holds and where (offsets from the record's start)."""

    cell_ids: np.ndarray  # (n,) int32, ascending
    shape: tuple[int, int, int]  # (8, S, S)
    chunks: np.ndarray  # (n, 2) int64: offset, length of every cell's block
    table: tuple[int, int] | None  # offset, length of the cell-table rows
    table_dtype: np.dtype | None

    def position(self, cell_id: int) -> int:
        """Index of ``cell_id`` in the record, or -1 when absent."""
        i = int(np.searchsorted(self.cell_ids, cell_id))
        return i if i < len(self.cell_ids) and self.cell_ids[i] == cell_id else -1


def record_name(field_id: str) -> str:
    """Name of a field's record inside a crop set."""
    return f"{field_id}{EXT}"


def _corrupt(name: str, why: str) -> InputError:
    return InputError(f"corrupt crop record {name}: {why}; delete it and re-run `hpasc crop`")


def encode_record(
    crops: np.ndarray, cell_ids: np.ndarray, cells: np.ndarray | None = None
) -> bytes:
    """One record: ``crops`` uint8 (n, 8, S, S), ``cell_ids`` (n,) ascending, optional table rows.

    ``cells`` (the field's cell table as a structured array) rides along so the cell table of a
    crop set can be rebuilt from its records.
    """
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1] != _PLANES:
        raise ValueError(f"crops must be uint8 (n, 8, S, S), got {crops.dtype} {crops.shape}")
    ids = np.asarray(cell_ids).astype(np.int32)
    if ids.shape != (len(crops),):
        raise ValueError(f"{len(crops)} crops but cell ids of shape {ids.shape}")
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        raise ValueError("cell ids must be strictly ascending")
    blocks = [_CODEC.encode(np.ascontiguousarray(c)) for c in crops]
    table = b"" if cells is None else np.ascontiguousarray(cells).tobytes()
    lengths = np.array([len(b) for b in blocks] + [len(table)], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def header(base: int) -> bytes:
        return json.dumps(
            {
                "version": _VERSION,
                "codec": _CODEC_NAME,
                "shape": list(crops.shape[1:]),
                "cell_ids": ids.tolist(),
                "chunks": [
                    [int(base + s), int(n)] for s, n in zip(starts[:-1], lengths[:-1], strict=True)
                ],
                "table": None if cells is None else [int(base + starts[-1]), len(table)],
                "table_dtype": None if cells is None else cells.dtype.descr,
            },
            separators=(",", ":"),
        ).encode()

    # offsets are absolute, so the header's own length enters them: settle it by iteration
    size = len(header(0))
    while len(head := header(_PREFIX.size + size)) != size:
        size = len(head)
    return b"".join([_PREFIX.pack(_MAGIC, len(head)), head, *blocks, table])


def _parse_header(head: bytes, name: str) -> RecordIndex:
    try:
        meta = json.loads(head)
        ids = np.asarray(meta["cell_ids"], dtype=np.int32)
        chunks = np.asarray(meta["chunks"], dtype=np.int64).reshape(len(ids), 2)
        shape = tuple(int(v) for v in meta["shape"])
        table = None if meta["table"] is None else (int(meta["table"][0]), int(meta["table"][1]))
        dtype = (
            None
            if meta["table_dtype"] is None
            else np.dtype([tuple(f) for f in meta["table_dtype"]])
        )
        codec = meta["codec"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(name, f"unreadable header ({exc})") from None
    if codec != _CODEC_NAME or len(shape) != 3 or shape[0] != _PLANES:
        raise _corrupt(name, f"unknown codec {codec!r} or crop shape {shape}")
    return RecordIndex(ids, shape, chunks, table, dtype)  # type: ignore[arg-type]


def _header_size(prefix: bytes, name: str) -> int:
    if len(prefix) < _PREFIX.size:
        raise _corrupt(name, "truncated")
    magic, size = _PREFIX.unpack(prefix[: _PREFIX.size])
    if magic != _MAGIC:
        raise _corrupt(name, "not an hpasc crop record")
    return size


def _index_of(data: bytes | memoryview, name: str) -> RecordIndex:
    size = _header_size(bytes(data[: _PREFIX.size]), name)
    return _parse_header(bytes(data[_PREFIX.size : _PREFIX.size + size]), name)


def _decode_block(block: bytes | memoryview, shape: tuple[int, int, int], name: str) -> np.ndarray:
    out = np.empty(shape, np.uint8)
    try:
        _CODEC.decode(block, out=out)
    except (RuntimeError, ValueError) as exc:
        raise _corrupt(name, f"a cell block does not decode ({exc})") from None
    return out


def _table_rows(data: bytes | memoryview, index: RecordIndex, name: str) -> np.ndarray | None:
    if index.table is None or index.table_dtype is None:
        return None
    start, length = index.table
    raw = bytes(data[start : start + length])
    if len(raw) != length or length % index.table_dtype.itemsize:
        raise _corrupt(name, "truncated cell table")
    return np.frombuffer(raw, dtype=index.table_dtype).copy()


def decode_record(data: bytes, name: str = "record") -> CropRecord:
    """All crops, cell ids and table rows of one record's bytes."""
    view = memoryview(data)
    index = _index_of(view, name)
    crops = np.empty((len(index.cell_ids), *index.shape), np.uint8)
    for i, (start, length) in enumerate(index.chunks.tolist()):
        if start + length > len(view):
            raise _corrupt(name, "truncated")
        crops[i] = _decode_block(view[start : start + length], index.shape, name)
    return CropRecord(crops, index.cell_ids, _table_rows(view, index, name))


# ----------------------------------------------------------------------------- stores


def _missing(store: Store, field_id: str) -> InputError:
    name = record_name(field_id)
    hint = ""
    if store.exists(f"{field_id}.npz"):
        hint = " (it holds an .npz record of an older hpasc: re-run `hpasc crop --overwrite`)"
    return InputError(f"no crop record {name} in {store}{hint}; run `hpasc crop` for this field")


def _read(store: Store, field_id: str) -> bytes:
    name = record_name(field_id)
    if not store.exists(name):
        raise _missing(store, field_id)
    return store.read_bytes(name)


def write_record(
    store: Store,
    field_id: str,
    crops: np.ndarray,
    cell_ids: np.ndarray,
    cells: np.ndarray | None = None,
) -> None:
    """Write a field's record ``<id>.crops`` (atomic, as every store write)."""
    store.write_bytes(record_name(field_id), encode_record(crops, cell_ids, cells))


def read_record(store: Store, field_id: str) -> CropRecord:
    """The whole record of ``field_id``."""
    return decode_record(_read(store, field_id), store.location(record_name(field_id)))


def read_index(store: Store, field_id: str) -> RecordIndex:
    """The header of a record, reading only its first bytes."""
    name = record_name(field_id)
    if not store.exists(name):
        raise _missing(store, field_id)
    where = store.location(name)
    with store.open(name, "rb") as f:
        size = _header_size(f.read(_PREFIX.size), where)
        return _parse_header(f.read(size), where)


def read_cell_ids(store: Store, field_id: str) -> np.ndarray:
    """The cell ids (ascending, int32) of a record; no crop is decoded."""
    return read_index(store, field_id).cell_ids


def read_table(store: Store, field_id: str) -> np.ndarray | None:
    """The cell-table rows kept in a record (None when it has none); no crop is decoded."""
    name = record_name(field_id)
    index = read_index(store, field_id)
    if index.table is None:
        return None
    with store.open(name, "rb") as f:
        f.seek(index.table[0])
        raw = f.read(index.table[1])
    shifted = RecordIndex(
        index.cell_ids, index.shape, index.chunks, (0, index.table[1]), index.table_dtype
    )
    return _table_rows(raw, shifted, store.location(name))


def list_ids(store: Store) -> list[str]:
    """Field ids that have a record in a crop set, sorted."""
    return sorted(n[: -len(EXT)] for n in store.list(f"*{EXT}"))


class CropReader:
    """Random access to single cells of crop sets, for map-style datasets.

    Holds only store URLs when pickled (DataLoader workers re-open the stores and rebuild their
    own header cache). A record's header is read once per process; each cell then costs one
    positioned read of its block and its decode.
    """

    def __init__(self, urls: list[str]):
        self.urls = [str(u) for u in urls]
        self._reset()

    def _reset(self) -> None:
        self._stores: dict[int, Store] = {}
        self._index: dict[tuple[int, str], RecordIndex] = {}
        self._paths: dict[tuple[int, str], str | None] = {}

    def __getstate__(self) -> dict:
        return {"urls": self.urls}

    def __setstate__(self, state: dict) -> None:
        self.urls = state["urls"]
        self._reset()

    def _store(self, s: int) -> Store:
        if s not in self._stores:
            self._stores[s] = Store(self.urls[s])
        return self._stores[s]

    def index(self, store: int, field_id: str) -> RecordIndex:
        """The (cached) header of ``field_id``'s record in store number ``store``."""
        key = (store, field_id)
        if key not in self._index:
            st = self._store(store)
            self._index[key] = read_index(st, field_id)
            path = st.local_path(record_name(field_id))
            self._paths[key] = None if path is None else os.fspath(path)
        return self._index[key]

    def read_cell(self, store: int, field_id: str, cell_id: int) -> np.ndarray:
        """The (8, S, S) uint8 crop of one cell."""
        index = self.index(store, field_id)
        i = index.position(cell_id)
        name = record_name(field_id)
        st = self._store(store)
        if i < 0:
            raise InputError(f"crop record {st.location(name)} has no cell {cell_id}")
        start, length = (int(v) for v in index.chunks[i])
        path = self._paths[(store, field_id)]
        if path is not None:  # a plain file: one positioned read, no Python file object
            fd = os.open(path, os.O_RDONLY)
            try:
                block = os.pread(fd, length, start)
            finally:
                os.close(fd)
        else:
            with st.open(name, "rb") as f:
                f.seek(start)
                block = f.read(length)
        if len(block) != length:
            raise _corrupt(st.location(name), "truncated")
        return _decode_block(block, index.shape, st.location(name))
