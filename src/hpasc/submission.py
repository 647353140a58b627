"""Kaggle submissions: per-cell predictions + original-size masks → ``submission.csv``, and checks.

A submission has the columns ``ID,ImageWidth,ImageHeight,PredictionString``; the prediction
string holds space-separated ``class confidence mask`` triples, mask = base64(zlib(COCO RLE))
(:mod:`hpasc.rle`). Every cell of a field is written with every class (the metric ignores
classes absent from a field's ground truth, so extra triples cost nothing).

Post-processing (the reference's ``average_predictions.py``): a cell's 19 confidences are
multiplied by ``min(1, area / T)``, T = the edge threshold for cells touching the border and the
centre threshold otherwise; areas are counted on the original-size mask.

Confidences are written as the shortest decimal string that reads back to the same float32
(``str(numpy.float32)``, e.g. ``0.6378329``, ``1e-05``): exact for the float32 tables, ≤ 9
significant digits.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from hpasc.cells import PROB_COLUMNS, AverageOptions, average_tables, read_table, validate_table
from hpasc.classes import NUM_CLASSES
from hpasc.errors import InputError
from hpasc.io.atomic import atomic_open
from hpasc.io.images import list_mask_ids, read_mask
from hpasc.io.store import Store
from hpasc.options import merged, option, validate
from hpasc.progress import track
from hpasc.rle import encode_runs, label_runs, mask_string_runs, run_facts

SUBMISSION_COLUMNS = ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
REFERENCE_SIDE = 2048  # the field size the reference thresholds were chosen for
_EXAMPLES = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubmitOptions(AverageOptions):
    """How predictions become a submission: the averaging of the tables, the post-processing
    (the reference's small-cell scaling, :func:`cell_scale`) and what is written."""

    edge_area_threshold: float = option(
        80_000.0, "Cells touching the border: confidence x min(1, area / T); T <= 0: off."
    )
    center_area_threshold: float = option(
        32_000.0, "Interior cells: confidence x min(1, area / T); T <= 0: off."
    )
    scale_thresholds_with_size: bool = option(
        False, "Scale both thresholds by field area / 2048^2."
    )
    min_confidence: float = option(
        0.0, "Leave out triples whose confidence is below this.", min=0.0, max=1.0
    )
    strict: bool = option(
        False, "A mask cell without a prediction is an error (default: left out, counted)."
    )

    def __post_init__(self) -> None:
        validate(self)


# --------------------------------------------------------------------------- post-processing


def cell_scale(
    areas: np.ndarray,
    touches_edge: np.ndarray,
    edge_threshold: float,
    center_threshold: float,
) -> np.ndarray:
    """Confidence factor per cell: ``min(1, area / T)``.

    Parameters
    ----------
    areas : (n,) cell areas in pixels (original resolution).
    touches_edge : (n,) bool, the cell has a pixel in the first/last row or column.
    edge_threshold, center_threshold : T for edge and interior cells; T ≤ 0 disables the rule.

    Returns
    -------
    (n,) float64 factors in [0, 1].

    Examples
    --------
    >>> cell_scale(np.array([2, 2]), np.array([True, False]), 10, 5).tolist()
    [0.2, 0.4]
    """
    areas = np.asarray(areas, dtype=np.float64)
    touches_edge = np.asarray(touches_edge, dtype=bool)
    if areas.shape != touches_edge.shape:
        raise ValueError(f"areas {areas.shape} and touches_edge {touches_edge.shape} differ")
    threshold = np.where(touches_edge, float(edge_threshold), float(center_threshold))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.minimum(1.0, areas / threshold)
    return np.where(threshold > 0, scale, 1.0)


def cell_facts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell labels present in an instance mask, their areas and whether they touch the border.

    Returns
    -------
    ids : (n,) sorted non-zero labels; areas : (n,) int64; touches_edge : (n,) bool.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return run_facts(label_runs(mask))


def format_confidences(values: np.ndarray) -> list[str]:
    """Shortest strings that read back to the same float32 values (see the module docstring)."""
    return [str(v) for v in np.asarray(values, dtype=np.float32).ravel()]


# --------------------------------------------------------------------------- writing


class SubmissionRow(NamedTuple):
    ID: str
    ImageWidth: int
    ImageHeight: int
    PredictionString: str


@dataclass
class SubmissionSummary:
    """Counts gathered while writing a submission."""

    fields: int = 0
    empty_fields: int = 0
    cells: int = 0
    edge_cells: int = 0
    center_cells: int = 0
    edge_scaled: int = 0
    center_scaled: int = 0
    triples: int = 0
    missing_cells: int = 0
    missing_examples: list[tuple[str, int]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"fields: {self.fields} ({self.empty_fields} without cells)",
            f"cells written: {self.cells} ({self.triples} triples)",
            f"edge cells: {self.edge_cells}, down-scaled: {self.edge_scaled}",
            f"centre cells: {self.center_cells}, down-scaled: {self.center_scaled}",
            f"mask cells without a prediction (left out): {self.missing_cells}",
        ]
        if self.missing_examples:
            shown = ", ".join(f"({i!r}, {c})" for i, c in self.missing_examples)
            out[-1] += f", e.g. {shown}"
        return out


def _class_list(classes: Sequence[int] | None) -> list[int]:
    if classes is None:
        return list(range(NUM_CLASSES))
    out = [int(c) for c in classes]
    bad = [c for c in out if not 0 <= c < NUM_CLASSES]
    if bad or len(set(out)) != len(out):
        raise InputError(f"classes must be distinct indices in 0..{NUM_CLASSES - 1}, got {out}")
    return out


def _check_table_fields(table_ids: Iterable[str], field_ids: Iterable[str], where: str) -> None:
    unknown = sorted(set(table_ids) - set(field_ids))
    if unknown:
        more = f" and {len(unknown) - _EXAMPLES} more" if len(unknown) > _EXAMPLES else ""
        raise InputError(
            f"predictions for {len(unknown)} fields that have no mask in {where}: "
            f"{unknown[:_EXAMPLES]}{more} (pass the masks the predictions were made on)"
        )


def field_rows(
    fields: Iterable[tuple[str, np.ndarray]],
    table: pd.DataFrame,
    options: SubmitOptions = SubmitOptions(),
    *,
    classes: Sequence[int] | None = None,
    summary: SubmissionSummary | None = None,
    **overrides: Any,
) -> Iterator[SubmissionRow]:
    """Submission rows for fields given as (image_id, original-size instance mask), streamed.

    Parameters
    ----------
    fields : iterable of (image_id, (H, W) integer mask, 0 = background).
    table : prediction table (:mod:`hpasc.cells`); cells are matched on (image_id, cell_id).
    options : the thresholds (:func:`cell_scale`; with ``scale_thresholds_with_size`` both are
        multiplied by H·W / 2048²), ``min_confidence`` (triples below it are left out) and
        ``strict`` (a mask cell without a prediction is an error instead of being left out).
    classes : class indices to write per cell (default: all 19, ascending).
    summary : filled with counts while iterating.
    **overrides : fields of ``options`` to replace (``edge_area_threshold=0``).

    Raises
    ------
    InputError
        A predicted cell is absent from its mask; with ``strict``, a mask cell lacks a
        prediction; after the last field, predictions remain for fields that were never given.
    """
    options = merged(SubmitOptions, options, overrides)
    validate_table(table)
    class_list = _class_list(classes)
    summary = summary if summary is not None else SubmissionSummary()
    rows_of = table.groupby("image_id", sort=False).indices
    probs = table[PROB_COLUMNS].to_numpy(np.float32)[:, class_list]
    table_cells = table["cell_id"].to_numpy(np.int64)
    seen: list[str] = []
    for image_id, mask in fields:
        image_id = str(image_id)
        seen.append(image_id)
        height, width = mask.shape
        if mask.ndim != 2:
            raise ValueError(f"mask of {image_id!r} must be 2-D, got shape {mask.shape}")
        runs = label_runs(mask)  # the one pass over the pixels: facts and mask strings
        ids, areas, touches = run_facts(runs)
        rows = rows_of.get(image_id, np.zeros(0, dtype=np.int64))
        cells = table_cells[rows]
        order = np.argsort(cells, kind="stable")
        rows, cells = rows[order], cells[order]
        absent = ~np.isin(cells, ids)
        if absent.any():
            raise InputError(
                f"field {image_id!r}: predicted cells {cells[absent][:_EXAMPLES].tolist()} are not "
                "in its mask (predictions made on other masks?)"
            )
        unpredicted = np.setdiff1d(ids, cells)
        if unpredicted.size:
            if options.strict:
                raise InputError(
                    f"field {image_id!r}: mask cells {unpredicted[:_EXAMPLES].tolist()} have no "
                    "prediction (drop --strict to leave them out)"
                )
            summary.missing_cells += int(unpredicted.size)
            room = _EXAMPLES - len(summary.missing_examples)
            summary.missing_examples += [(image_id, int(c)) for c in unpredicted[:room]]

        pos = np.searchsorted(ids, cells)
        factor = height * width / REFERENCE_SIDE**2 if options.scale_thresholds_with_size else 1.0
        edge = touches[pos]
        scale = cell_scale(
            areas[pos],
            edge,
            options.edge_area_threshold * factor,
            options.center_area_threshold * factor,
        )
        conf = (probs[rows].astype(np.float64) * scale[:, None]).astype(np.float32)
        strings = encode_runs(runs) if cells.size else {}
        text = format_confidences(conf)
        keep = (conf >= options.min_confidence).ravel()
        n_classes = len(class_list)
        parts = []
        for i, cell in enumerate(cells.tolist()):
            mask_text = strings[cell]
            for j, k in enumerate(class_list):
                idx = i * n_classes + j
                if keep[idx]:
                    parts.append(f"{k} {text[idx]} {mask_text}")

        summary.fields += 1
        summary.empty_fields += int(ids.size == 0)
        summary.cells += int(cells.size)
        summary.edge_cells += int(edge.sum())
        summary.center_cells += int((~edge).sum())
        summary.edge_scaled += int((scale[edge] < 1).sum())
        summary.center_scaled += int((scale[~edge] < 1).sum())
        summary.triples += len(parts)
        yield SubmissionRow(image_id, width, height, " ".join(parts))
    _check_table_fields(rows_of.keys(), seen, "the fields given")


def _open_store(masks: Any) -> Store:
    return masks if isinstance(masks, Store) else Store(str(masks))


def _load_predictions(table_or_tables: Any, options: AverageOptions) -> pd.DataFrame:
    if isinstance(table_or_tables, pd.DataFrame | str | os.PathLike):
        table_or_tables = [table_or_tables]
    tables = list(table_or_tables)
    if len(tables) == 1 and options.weights is None:
        only = tables[0]
        if isinstance(only, pd.DataFrame):
            validate_table(only)
            return only
        return read_table(only)
    return average_tables(tables, weights=options.weights, allow_missing=options.allow_missing)


def _store_fields(store, ids: Sequence[str], progress: bool) -> Iterator[tuple[str, np.ndarray]]:
    for image_id in track(ids, "submission", enabled=progress):
        yield image_id, read_mask(store, image_id)


def _prepare(mask_store, table_or_tables, options: AverageOptions):
    store = _open_store(mask_store)
    table = _load_predictions(table_or_tables, options)
    ids = sorted(list_mask_ids(store))
    _check_table_fields(table["image_id"].unique(), ids, str(mask_store))
    return store, table, ids


def build_submission(
    mask_store,
    table_or_tables,
    options: SubmitOptions = SubmitOptions(),
    *,
    progress: bool = False,
    summary: SubmissionSummary | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """Submission as a DataFrame: one row per field of ``mask_store`` (sorted ids).

    ``table_or_tables``: a prediction table or Parquet path, or several (averaged with
    ``options.weights`` by :func:`hpasc.cells.average_tables`). ``options`` and ``overrides``:
    as :func:`field_rows`.
    """
    options = merged(SubmitOptions, options, overrides)
    store, table, ids = _prepare(mask_store, table_or_tables, options)
    rows = field_rows(_store_fields(store, ids, progress), table, options, summary=summary)
    return pd.DataFrame(list(rows), columns=SUBMISSION_COLUMNS)


def write_submission(
    mask_store,
    table_or_tables,
    out_csv: str | os.PathLike,
    options: SubmitOptions = SubmitOptions(),
    *,
    progress: bool = False,
    **overrides: Any,
) -> SubmissionSummary:
    """Write ``submission.csv`` row by row (memory independent of the number of fields).

    The file appears only when complete (temporary file, then rename; nothing on an error).
    Arguments as :func:`build_submission`. Returns the summary counts.
    """
    options = merged(SubmitOptions, options, overrides)
    store, table, ids = _prepare(mask_store, table_or_tables, options)
    summary = SubmissionSummary()
    fields = _store_fields(store, ids, progress)
    write_rows(field_rows(fields, table, options, summary=summary), out_csv)
    return summary


def write_rows(rows: Iterable[SubmissionRow], out_csv: str | os.PathLike) -> None:
    """Write submission rows (as :func:`field_rows` yields them) to a CSV file, streamed.

    The file appears only when complete (temporary file, then rename; nothing on an error).
    """
    with atomic_open(out_csv) as raw:  # discarded on an exception
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        writer.writerows(rows)
        text.flush()
        text.detach()  # the atomic writer commits when the with block closes it


# --------------------------------------------------------------------------- reading and checking


class CsvRow(NamedTuple):
    """One data row as text; ``row`` is its line number in the file (the header is line 1)."""

    row: int
    ID: str
    ImageWidth: str
    ImageHeight: str
    PredictionString: str


def iter_csv_rows(
    source: str | os.PathLike | pd.DataFrame,
    on_bad_row: Callable[[int, str], None] | None = None,
) -> Iterator[CsvRow]:
    """Stream the rows of a submission or solution (path or DataFrame) as text.

    Raises :class:`InputError` when the file is missing or lacks one of the four columns. A row
    with the wrong number of columns is an error too, unless ``on_bad_row(line, message)`` is
    given: then it is reported there and skipped.
    """
    if isinstance(source, pd.DataFrame):
        missing = [c for c in SUBMISSION_COLUMNS if c not in source.columns]
        if missing:
            raise InputError(f"table lacks columns {missing}")
        frame = source[SUBMISSION_COLUMNS].fillna("")
        for i, values in enumerate(frame.itertuples(index=False, name=None)):
            yield CsvRow(i + 2, *(str(v) for v in values))
        return
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path} not found")
    csv.field_size_limit(2**31 - 1)  # one row holds every mask of a field
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path} is empty (expected header {','.join(SUBMISSION_COLUMNS)})")
        missing = [c for c in SUBMISSION_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path}: header lacks {missing} (got {header})")
        where = [header.index(c) for c in SUBMISSION_COLUMNS]
        for values in reader:
            if len(values) != len(header):
                message = f"{len(values)} columns, the header has {len(header)}"
                if on_bad_row is None:
                    raise InputError(f"{path} line {reader.line_num}: {message}")
                on_bad_row(reader.line_num, message)
                continue
            yield CsvRow(reader.line_num, *(values[i] for i in where))


def parse_size(row: CsvRow) -> tuple[int, int]:
    """(height, width) of a row; ValueError when not positive integers."""
    width, height = int(row.ImageWidth), int(row.ImageHeight)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} is not positive")
    return height, width


class Problem(NamedTuple):
    """A problem found in a submission: ``row`` = line number (0 = the file as a whole)."""

    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}" if self.row else self.message


def _check_triples(text: str, height: int, width: int) -> list[str]:
    tokens = text.split()
    if len(tokens) % 3:
        return [f"{len(tokens)} tokens in PredictionString, not a multiple of 3"]
    out: list[str] = []
    checked: set[str] = set()
    for t in range(0, len(tokens), 3):
        label, conf, mask_text = tokens[t : t + 3]
        n = t // 3 + 1
        if not (label.isdigit() and int(label) < NUM_CLASSES):
            out.append(f"triple {n}: label {label!r} is not a class index 0..{NUM_CLASSES - 1}")
        try:
            value = float(conf)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                out.append(f"triple {n}: confidence {conf!r} is not in [0, 1]")
        except ValueError:
            out.append(f"triple {n}: confidence {conf!r} is not a number")
        if mask_text not in checked:  # the triples of one cell share its mask: check it once
            checked.add(mask_text)
            try:
                mask_string_runs(mask_text, height, width)
            except ValueError as exc:
                out.append(f"triple {n}: mask {mask_text[:20]!r}…: {exc}")
        if len(out) >= _EXAMPLES:
            out.append("further triples not checked")
            break
    return out


def check_submission(csv_path: str | os.PathLike, masks=None) -> list[Problem]:
    """Validate a submission file; return every problem found (empty list: valid).

    Checks the exact header, the four columns of each row, sizes (positive integers; equal to
    the mask sizes and one row per mask when ``masks`` is given), unique IDs, and each triple:
    label 0..18, finite confidence in [0, 1], a mask string that decodes to the stated size.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"{path} not found")
    problems: list[Problem] = []
    with open(path, newline="") as fh:
        first = fh.readline().rstrip("\r\n")
    if first != ",".join(SUBMISSION_COLUMNS):
        problems.append(Problem(1, f"header {first!r}, expected {','.join(SUBMISSION_COLUMNS)!r}"))
        if any(c not in first.split(",") for c in SUBMISSION_COLUMNS):
            return problems

    mask_ids: set[str] | None = None
    if masks is not None:
        store = _open_store(masks)
        mask_ids = set(list_mask_ids(store))
    seen: dict[str, int] = {}

    def bad_row(line: int, message: str) -> None:
        problems.append(Problem(line, message))

    for row in iter_csv_rows(path, on_bad_row=bad_row):
        if row.ID in seen:
            problems.append(Problem(row.row, f"ID {row.ID!r} repeats row {seen[row.ID]}"))
            continue
        seen[row.ID] = row.row
        try:
            height, width = parse_size(row)
        except ValueError:
            problems.append(
                Problem(row.row, f"ID {row.ID!r}: bad size {row.ImageWidth!r}x{row.ImageHeight!r}")
            )
            continue
        if mask_ids is not None:
            if row.ID not in mask_ids:
                problems.append(Problem(row.row, f"ID {row.ID!r} has no mask in {masks}"))
            else:
                shape = read_mask(store, row.ID).shape
                if shape != (height, width):
                    problems.append(
                        Problem(
                            row.row,
                            f"ID {row.ID!r}: size {width}x{height}, mask is {shape[1]}x{shape[0]}",
                        )
                    )
        problems += [
            Problem(row.row, f"ID {row.ID!r}: {m}")
            for m in _check_triples(row.PredictionString, height, width)
        ]
    if mask_ids is not None:
        absent = sorted(mask_ids - set(seen))
        if absent:
            more = f" and {len(absent) - _EXAMPLES} more" if len(absent) > _EXAMPLES else ""
            problems.append(
                Problem(
                    0, f"{len(absent)} fields of {masks} have no row: {absent[:_EXAMPLES]}{more}"
                )
            )
    return problems
