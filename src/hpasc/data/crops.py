"""Cell-crop data for the cell-level model: which cells, which targets, and a streaming loader.

A :class:`CellSet` lists cells field by field (cells of field ``f`` are rows
``offsets[f]:offsets[f+1]``) with one 19-class target per cell: the field's multi-hot image label
broadcast to its cells, or a *soft* label looked up by ``(image_id, cell_id)`` in an out-of-fold
cell prediction table. It never holds pixels: those stay in the crop sets (one record per field,
``crops`` uint8 (n, 8, S, S) + ``cell_ids``, see :mod:`hpasc.io.cropset`).

:class:`CropStream` feeds a DataLoader. Every (rank, worker) reads its own share of the fields,
each field's record once per epoch, and shuffles cells through a bounded buffer, so memory does
not grow with the data set and no record is decoded twice in an epoch. Every worker yields full
batches only, and all ranks the same number of them (training drops the remainder, evaluation
pads with rows marked ``-1``), which is what DDP needs.

:class:`CropCells` (with :func:`uniform_loader`) is the map-style alternative for training:
cells drawn uniformly over all cells by a ``RandomSampler``, each read by random access into
its record (``data.sampling: uniform``, the reference's sampling).
"""

from __future__ import annotations

import heapq
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from hpasc.classes import NUM_CLASSES, read_labels
from hpasc.data.fields import PseudoLabels
from hpasc.data.folds import make_folds, read_folds
from hpasc.errors import ConfigError, InputError
from hpasc.io import cropset
from hpasc.io.cropset import CropReader
from hpasc.io.store import Store
from hpasc.paths import anchor
from hpasc.prepare import CELL_TABLE
from hpasc.progress import track

PARTS = ("train", "valid", "all")
SAMPLINGS = ("stream", "uniform")


@dataclass
class CropSourceConfig:
    """One source of labelled fields (the Kaggle train set, public HPA, ...).

    Soft labels replace the image labels of the training cells completely (as the reference);
    validation cells always keep the broadcast image labels. Paths are relative to
    ``data.root`` unless absolute or URLs.
    """

    name: str = ""
    crops: str = ""  # crop set (folder, x.zip/sub, URL)
    labels: str = ""  # Kaggle train.csv or public-HPA table
    folds: str | None = None  # ID,fold CSV; None: made from the labels (n_folds, fold_seed)
    soft_labels: str | None = None  # out-of-fold cell table: targets of the training cells
    solution: str | None = None  # per-cell ground truth (synthetic data): cell metric in validation
    masks: str | None = None  # the masks the crops and the solution were made from (cell metric)


@dataclass
class CellSet:
    """Cells of a list of fields and their targets (no pixels).

    Attributes
    ----------
    image_ids : field ids, in order.
    stores : crop-set locations; ``store_index[f]`` is the one holding field ``f``.
    store_index : (n_fields,) int.
    image_labels : (n_fields, 19) float32 multi-hot image labels (zeros when unknown).
    folds : (n_fields,) int fold of each field (-1 when unknown).
    offsets : (n_fields + 1,) int64; the cells of field ``f`` are rows ``offsets[f]:offsets[f+1]``.
    cell_ids : (n_cells,) int64 cell ids (mask labels).
    targets : (n_cells, 19) float32 training targets.
    """

    image_ids: list[str]
    stores: list[str]
    store_index: np.ndarray
    image_labels: np.ndarray
    folds: np.ndarray
    offsets: np.ndarray
    cell_ids: np.ndarray
    targets: np.ndarray

    @property
    def n_fields(self) -> int:
        return len(self.image_ids)

    @property
    def n_cells(self) -> int:
        return len(self.cell_ids)

    def cell_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell_field(self) -> np.ndarray:
        """(n_cells,) index of the field of every cell."""
        return np.repeat(np.arange(self.n_fields), self.cell_counts())

    def keys(self, rows: np.ndarray | None = None) -> pd.DataFrame:
        """``image_id, cell_id`` of the cells ``rows`` (all cells when None)."""
        rows = np.arange(self.n_cells) if rows is None else np.asarray(rows)
        field = self.cell_field()[rows]
        return pd.DataFrame(
            {
                "image_id": np.asarray(self.image_ids, dtype=object)[field],
                "cell_id": self.cell_ids[rows],
            }
        )

    def broadcast_labels(self) -> np.ndarray:
        """(n_cells, 19) image label of each cell's field (the weak cell label)."""
        return self.image_labels[self.cell_field()]

    @staticmethod
    def concat(sets: Sequence[CellSet]) -> CellSet:
        """One set holding the fields of ``sets`` (at least one) in order; ids must not repeat."""
        if not sets:
            raise ValueError("CellSet.concat needs at least one set")
        ids = [i for s in sets for i in s.image_ids]
        _check_unique(ids)
        stores = list(dict.fromkeys(url for s in sets for url in s.stores))
        index = [
            np.asarray([stores.index(u) for u in s.stores], np.int64)[s.store_index] for s in sets
        ]
        counts = np.concatenate([s.cell_counts() for s in sets])
        return CellSet(
            image_ids=ids,
            stores=stores,
            store_index=np.concatenate(index),
            image_labels=np.concatenate([s.image_labels for s in sets]),
            folds=np.concatenate([s.folds for s in sets]),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            cell_ids=np.concatenate([s.cell_ids for s in sets]),
            targets=np.concatenate([s.targets for s in sets]),
        )


def _check_unique(ids: Sequence[str]) -> None:
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise InputError(f"field ids appear in more than one source: {list(dup[:5])}")


# ---------------------------------------------------------------------------------- records


def _record_cell_ids(store, image_id: str) -> np.ndarray:
    """The cell ids of one record (only its header is read)."""
    return cropset.read_cell_ids(store, image_id).astype(np.int64)


def cell_lists(store, image_ids: Sequence[str], progress: bool = True) -> list[np.ndarray]:
    """Cell ids (ascending) of every field of ``image_ids`` in a crop set.

    Read from the crop set's cell table (``cells.parquet``, written by ``hpasc crop``) when it
    has one, else from the records. A field without a record is an error naming it.
    """
    have = set(cropset.list_ids(store))
    missing = [i for i in image_ids if i not in have]
    if missing:
        raise InputError(
            f"no crop record for {len(missing)} field(s) in {store}, e.g. "
            f"{store.location(cropset.record_name(missing[0]))}; run `hpasc crop` on these fields"
        )
    if store.exists(CELL_TABLE):
        table = pd.read_parquet(
            io.BytesIO(store.read_bytes(CELL_TABLE)), columns=["image_id", "cell_id"]
        )
        groups = table.groupby("image_id", sort=False)["cell_id"]
        by_field = {str(k): np.sort(v.to_numpy(np.int64)) for k, v in groups}
        empty = np.zeros(0, np.int64)
        return [by_field.get(i, empty) for i in image_ids]
    quiet = not progress or len(image_ids) < 200
    return [
        _record_cell_ids(store, i)
        for i in track(image_ids, f"listing cells of {store}", enabled=not quiet)
    ]


# --------------------------------------------------------------------------------- building


def _field_folds(path: str | None, labels, n_folds: int, fold_seed: int) -> np.ndarray:
    """Fold of every field of ``labels``: from the fold table ``path``, else made per source."""
    table = read_folds(path) if path else make_folds(labels, n_folds, fold_seed)
    fold_of = dict(zip(table["ID"].astype(str), table["fold"].astype(int), strict=True))
    missing = [i for i in labels.ids if i not in fold_of]
    if missing:
        raise InputError(
            f"fold table {path} lacks {len(missing)} field(s) of {labels.source}: {missing[:5]}"
        )
    return np.asarray([fold_of[i] for i in labels.ids], dtype=np.int64)


def build_cell_set(
    store_url: str,
    image_ids: Sequence[str],
    image_labels: np.ndarray | None = None,
    folds: np.ndarray | None = None,
    soft_labels=None,
    progress: bool = True,
) -> CellSet:
    """The cells of ``image_ids`` in one crop set, with targets.

    Targets are ``soft_labels`` (a :class:`hpasc.data.fields.PseudoLabels`) looked up by
    (image_id, cell_id) when given, else the image labels broadcast to the cells (zeros when
    ``image_labels`` is None, e.g. a test set). A cell without a soft label is an error naming it.
    """
    image_ids = [str(i) for i in image_ids]
    n = len(image_ids)
    labels = (
        np.zeros((n, NUM_CLASSES), np.float32)
        if image_labels is None
        else np.asarray(image_labels, np.float32)
    )
    if labels.shape != (n, NUM_CLASSES):
        raise ValueError(f"image_labels must be ({n}, {NUM_CLASSES}), got {labels.shape}")
    lists = cell_lists(Store(store_url), image_ids, progress)
    counts = np.asarray([len(c) for c in lists], dtype=np.int64)
    cells = CellSet(
        image_ids=image_ids,
        stores=[store_url],
        store_index=np.zeros(n, np.int64),
        image_labels=labels,
        folds=np.full(n, -1, np.int64) if folds is None else np.asarray(folds, np.int64),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        cell_ids=np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64),
        targets=np.zeros((0, NUM_CLASSES), np.float32),
    )
    cells.targets = cells.broadcast_labels()
    if soft_labels is not None:
        for f in np.flatnonzero(counts):
            start, stop = cells.offsets[f], cells.offsets[f + 1]
            cells.targets[start:stop] = soft_labels.targets(
                image_ids[f], cells.cell_ids[start:stop]
            )
    return cells


@dataclass
class SourceFields:
    """The labelled fields of one source: ids, multi-hot labels and folds."""

    source: CropSourceConfig
    ids: list[str]
    y: np.ndarray
    folds: np.ndarray

    def select(self, fold: int | None, part: str) -> np.ndarray:
        """Boolean selection of the ``part`` of the fields ("train", "valid" or "all")."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        if part == "all":
            return np.ones(len(self.ids), bool)
        if fold is None:
            raise ValueError(f"part {part!r} needs a fold")
        if fold not in set(self.folds.tolist()):
            raise ConfigError(
                f"fold {fold} does not exist (folds of {self.source.labels}: {sorted(set(self.folds.tolist()))})"
            )
        return (self.folds != fold) if part == "train" else (self.folds == fold)


def source_fields(data_cfg) -> list[SourceFields]:
    """Labels and folds of every source of ``data_cfg`` (a ``CellDataConfig``); no crop is read.

    Folds come from the source's fold table, or are made per source from its labels (the
    reference stratified Kaggle train and public HPA separately).
    """
    if not data_cfg.sources:
        raise ConfigError("data.sources is empty: list at least one crop set with its labels")
    out = []
    for i, src in enumerate(data_cfg.sources):
        if not src.crops or not src.labels:
            raise ConfigError(f"data.sources[{i}] needs both 'crops' and 'labels'")
        labels = read_labels(anchor(src.labels, data_cfg.root))
        folds = _field_folds(
            anchor(src.folds, data_cfg.root), labels, data_cfg.n_folds, data_cfg.fold_seed
        )
        out.append(SourceFields(src, list(labels.ids), labels.y, folds))
    _check_unique([i for s in out for i in s.ids])
    return out


def load_sources(
    data_cfg,
    fold: int | None = None,
    part: str = "all",
    soft: bool = True,
    crops: str | None = None,
    progress: bool = True,
) -> CellSet:
    """The cells of the ``part`` of every source of ``data_cfg`` (a ``CellDataConfig``),
    concatenated in source order: "train" = folds other than ``fold``, "valid" = ``fold``, "all".

    With ``soft``, a source's ``soft_labels`` table (when set) gives the targets; otherwise the
    image labels are broadcast to the cells (validation always uses image labels, as the
    reference did). ``crops`` replaces the crop set of every source.
    """
    sets, tables = [], {}
    for fields in source_fields(data_cfg):
        src = fields.source
        keep = fields.select(fold, part)
        ids = [f for f, k in zip(fields.ids, keep, strict=True) if k]
        pseudo = None
        if soft and src.soft_labels:
            path = anchor(src.soft_labels, data_cfg.root)
            if path not in tables:  # sources usually share one out-of-fold table: read it once
                tables[path] = PseudoLabels.read(path)
            pseudo = tables[path]
        store = crops or anchor(src.crops, data_cfg.root)
        sets.append(
            build_cell_set(store, ids, fields.y[keep], fields.folds[keep], pseudo, progress)
        )
    return CellSet.concat(sets)


# -------------------------------------------------------------------------------- streaming


def _assign(counts: np.ndarray, order: np.ndarray, slots: int) -> list[list[int]]:
    """Fields (taken in ``order``) to ``slots`` lists, each field to the slot with fewest cells."""
    heap = [(0, s) for s in range(slots)]
    out: list[list[int]] = [[] for _ in range(slots)]
    for f in order:
        if counts[f] == 0:
            continue
        load, s = heapq.heappop(heap)
        out[s].append(int(f))
        heapq.heappush(heap, (load + int(counts[f]), s))
    return out


@dataclass(frozen=True)
class _Plan:
    fields: list[int]  # fields of this (rank, worker), in reading order
    quota: int  # items it yields: a multiple of the batch size
    padding: int  # of which padding items (evaluation only)


class CropStream(IterableDataset):
    """Cells of a :class:`CellSet` as ``(crop uint8 8×S×S, target float32 (19,), row int64)``.

    Parameters
    ----------
    cells : the cells to stream.
    batch_size : the DataLoader's batch size (every worker yields whole batches).
    train : shuffle (fields by a permutation of ``seed`` and the epoch, cells through a buffer of
        ``buffer_size``) and drop the last partial batch of every worker; otherwise every cell
        once in field order, padded with rows ``-1`` (zero crops) to whole batches.
    num_workers : the DataLoader's ``num_workers``.
    rank, world_size : this process among the DDP processes; fields are split between them and
        every rank yields the same number of batches.
    """

    def __init__(
        self,
        cells: CellSet,
        batch_size: int,
        train: bool = False,
        seed: int = 0,
        buffer_size: int = 2048,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.cells = cells
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.buffer_size = max(1, buffer_size)
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._stores: dict[int, object] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (call before iterating; workers get a copy at iter time)."""
        self.epoch = int(epoch)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_stores"] = {}  # every process opens its own readers
        return state

    # -- planning (the same in every process, so all agree on the split and the lengths)

    def _plans(self) -> list[list[_Plan]]:
        """Per rank, per worker: fields, quota and padding."""
        workers = max(1, self.num_workers)
        slots = self.world_size * workers
        counts = self.cells.cell_counts()
        if self.train:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.cells.n_fields)
        else:
            order = np.arange(self.cells.n_fields)
        assigned = _assign(counts, order, slots)
        b = self.batch_size
        plans = []
        per_rank_cells = [
            [int(counts[assigned[r * workers + w]].sum()) for w in range(workers)]
            for r in range(self.world_size)
        ]
        if self.train:
            batches = [[c // b for c in ranks] for ranks in per_rank_cells]
            target = min(sum(r) for r in batches)
            for r in range(self.world_size):
                # trim the fullest workers until this rank has as many batches as the poorest
                while sum(batches[r]) > target:
                    batches[r][int(np.argmax(batches[r]))] -= 1
                plans.append(
                    [_Plan(assigned[r * workers + w], batches[r][w] * b, 0) for w in range(workers)]
                )
        else:
            batches = [[math.ceil(c / b) for c in ranks] for ranks in per_rank_cells]
            target = max(sum(r) for r in batches) if self.world_size > 1 else sum(batches[0])
            for r in range(self.world_size):
                extra = target - sum(batches[r])
                plans.append(
                    [
                        _Plan(
                            assigned[r * workers + w],
                            (batches[r][w] + (extra if w == 0 else 0)) * b,
                            (batches[r][w] + (extra if w == 0 else 0)) * b - per_rank_cells[r][w],
                        )
                        for w in range(workers)
                    ]
                )
        return plans

    def __len__(self) -> int:
        """Items this rank yields per epoch (a multiple of the batch size)."""
        return sum(p.quota for p in self._plans()[self.rank])

    # -- iteration

    def _store(self, index: int):
        if index not in self._stores:
            self._stores[index] = Store(self.cells.stores[index])
        return self._stores[index]

    def _field_items(self, f: int) -> Iterator[tuple[np.ndarray, int]]:
        """(crop, row) for every cell of field ``f``, reading its record once."""
        image_id = self.cells.image_ids[f]
        store = self._store(int(self.cells.store_index[f]))
        crops, ids, _ = cropset.read_record(store, image_id)
        position = {int(c): i for i, c in enumerate(np.asarray(ids))}
        start, stop = self.cells.offsets[f], self.cells.offsets[f + 1]
        for row in range(start, stop):
            cell = int(self.cells.cell_ids[row])
            if cell not in position:
                raise InputError(f"crop record of field '{image_id}' in {store} has no cell {cell}")
            # a copy, so a shuffle buffer never pins a whole record for one remaining cell
            yield crops[position[cell]].copy(), row

    def _item(self, crop: np.ndarray, row: int):
        return torch.from_numpy(crop), torch.from_numpy(self.cells.targets[row]), row

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != max(1, self.num_workers):
            raise ValueError(
                f"CropStream planned for {self.num_workers} workers but runs in a DataLoader with {workers}"
            )
        plan = self._plans()[self.rank][worker]
        yielded = 0
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
            buffer: list[tuple[np.ndarray, int]] = []
            for f in plan.fields:
                for item in self._field_items(f):
                    if yielded >= plan.quota:
                        return
                    if len(buffer) < self.buffer_size:
                        buffer.append(item)
                        continue
                    j = int(rng.integers(len(buffer)))
                    out, buffer[j] = buffer[j], item
                    yield self._item(*out)
                    yielded += 1
            rng.shuffle(buffer)
            for item in buffer[: plan.quota - yielded]:
                yield self._item(*item)
            return
        shape = None
        for f in plan.fields:
            for crop, row in self._field_items(f):
                shape = crop.shape
                yield self._item(crop, row)
        if plan.padding:
            if shape is None:
                shape = self._crop_shape()
            pad = (torch.zeros(shape, dtype=torch.uint8), torch.zeros(NUM_CLASSES), -1)
            for _ in range(plan.padding):
                yield pad

    def _crop_shape(self) -> tuple[int, ...]:
        """Crop shape of the set (for padding a worker that holds no field)."""
        for f in np.flatnonzero(self.cells.cell_counts()):
            for crop, _ in self._field_items(int(f)):
                return crop.shape
        raise InputError("no cell in this crop set")


def stream_loader(stream: CropStream, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The DataLoader matching ``stream`` (its batch size and number of workers)."""
    return torch.utils.data.DataLoader(
        stream,
        batch_size=stream.batch_size,
        num_workers=stream.num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,  # workers must see set_epoch()
    )


# ------------------------------------------------------------------------- uniform sampling


class CropCells(Dataset):
    """Map-style view of a :class:`CellSet`: item ``i`` is ``(crop uint8 8×S×S, target, i)``.

    Every item is read by random access into its field's record (one cell block decoded), so a
    :class:`~torch.utils.data.RandomSampler` draws cells uniformly over all cells, as the
    reference's training did; memory does not grow with the data set.
    """

    def __init__(self, cells: CellSet) -> None:
        self.cells = cells
        self._field = cells.cell_field().astype(np.int32)
        self._reader = CropReader(cells.stores)

    def __len__(self) -> int:
        return self.cells.n_cells

    def __getitem__(self, row: int):
        row = int(row)
        f = int(self._field[row])
        crop = self._reader.read_cell(
            int(self.cells.store_index[f]), self.cells.image_ids[f], int(self.cells.cell_ids[row])
        )
        return torch.from_numpy(crop), torch.from_numpy(self.cells.targets[row]), row


def uniform_loader(
    cells: CellSet, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """Training batches of cells drawn uniformly over all cells (a seeded ``RandomSampler``).

    The last partial batch is kept, as in the reference. Under DDP Lightning swaps the sampler
    for a ``DistributedSampler`` (shuffled, epoch-aware).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = CropCells(cells)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=torch.utils.data.RandomSampler(dataset, generator=generator),
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        # the sampler lives in the main process: workers keep their record headers between epochs
        persistent_workers=num_workers > 0,
    )
