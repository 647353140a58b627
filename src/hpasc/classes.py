"""The 19 classes of the HPA single-cell competition, and image-level label tables.

Label tables are parsed into a :class:`LabelTable`: field ids in file order and a multi-hot
``(n, 19)`` matrix. Two sources are understood: the Kaggle ``train.csv`` (``ID,Label`` with
labels joined by ``|``) and the public-HPA table (``Image, Label_idx, in_trainset, Cellline, ...``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpasc.errors import InputError

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
NUM_CLASSES = len(CLASS_NAMES)
NEGATIVE = 18
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


def class_name(index: int) -> str:
    """Name of class ``index`` (0..18)."""
    if not 0 <= int(index) < NUM_CLASSES:
        raise ValueError(f"class index must be in 0..{NUM_CLASSES - 1}, got {index}")
    return CLASS_NAMES[int(index)]


def class_index(name: str) -> int:
    """Index of a class given its name (case-insensitive) or its number as text."""
    key = name.strip()
    if key.isdigit():
        return _check_index(int(key), where=f"class '{name}'")
    for i, n in enumerate(CLASS_NAMES):
        if n.lower() == key.lower():
            return i
    raise InputError(f"unknown class name '{name}' (known: {', '.join(CLASS_NAMES)})")


def _check_index(value: int, where: str) -> int:
    if not 0 <= value < NUM_CLASSES:
        raise InputError(f"{where}: label {value} is out of range 0..{NUM_CLASSES - 1}")
    return value


def parse_label_string(text: str, where: str = "label") -> list[int]:
    """``"8|5|0"`` -> ``[8, 5, 0]``; an unknown or out-of-range label raises :class:`InputError`."""
    out: list[int] = []
    for part in str(text).split("|"):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(float(part)) if part.replace(".", "", 1).isdigit() else int(part)
        except ValueError:
            raise InputError(f"{where}: label '{part}' is not a class index 0..18") from None
        out.append(_check_index(value, where))
    if not out:
        raise InputError(f"{where}: empty label")
    return out


def multi_hot(labels: list[list[int]]) -> np.ndarray:
    """List of label lists -> ``(n, 19)`` float32 multi-hot matrix."""
    y = np.zeros((len(labels), NUM_CLASSES), dtype=np.float32)
    for i, row in enumerate(labels):
        y[i, row] = 1.0
    return y


@dataclass
class LabelTable:
    """Image-level labels: ``ids[i]`` has the classes ``labels[i]`` (multi-hot in :attr:`y`)."""

    ids: list[str]
    labels: list[list[int]]
    source: str = ""
    images: list[str] | None = None  # public-HPA tables: the ``Image`` value of each row

    @property
    def y(self) -> np.ndarray:
        return multi_hot(self.labels)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.ids)}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"ID": self.ids, "Label": ["|".join(map(str, lab)) for lab in self.labels]}
        )

    def concat(self, other: LabelTable) -> LabelTable:
        dup = set(self.ids) & set(other.ids)
        if dup:
            raise InputError(f"field ids appear in both label tables: {sorted(dup)[:5]}")
        return LabelTable(self.ids + other.ids, self.labels + other.labels, self.source)


def public_hpa_field_id(image: str) -> str:
    """Field id of a public-HPA ``Image`` value: its last ``/`` part (``.../921_B9_1`` -> ``921_B9_1``)."""
    return str(image).rstrip("/").split("/")[-1]


def _read_csv(path_or_text: str | Path | bytes) -> tuple[pd.DataFrame, str]:
    if isinstance(path_or_text, bytes):
        return pd.read_csv(io.BytesIO(path_or_text), dtype=str, keep_default_na=False), "<bytes>"
    path = Path(path_or_text)
    if not path.is_file():
        raise InputError(f"label table not found: {path}")
    try:
        # Both tables are comma-separated (the public-HPA '.tsv' too); sniff tabs just in case.
        sep = "\t" if "\t" in path.open().readline() else ","
        return pd.read_csv(path, dtype=str, sep=sep, keep_default_na=False), str(path)
    except pd.errors.EmptyDataError:
        raise InputError(
            f"{path} is empty; a label table needs a header (ID,Label) and one row per field"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable CSV table: {exc}") from exc


def read_kaggle_labels(path: str | Path | bytes) -> LabelTable:
    """Parse a Kaggle ``train.csv`` (``ID,Label``). Row numbers in errors are 1-based file lines."""
    df, src = _read_csv(path)
    missing = {"ID", "Label"} - set(df.columns)
    if missing:
        raise InputError(f"{src}: missing column(s) {sorted(missing)}; expected header 'ID,Label'")
    ids, labels = [], []
    for i, (fid, lab) in enumerate(zip(df["ID"], df["Label"], strict=True)):
        where = f"{src} row {i + 2} (ID {fid})"
        if not fid:
            raise InputError(f"{src} row {i + 2}: empty ID")
        labels.append(parse_label_string(lab, where))
        ids.append(fid)
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise InputError(f"{src}: duplicate ID(s) {list(dup[:5])}")
    return LabelTable(ids, labels, src)


def _truthy(value: str) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes", "t"}


def read_public_hpa_labels(path: str | Path | bytes) -> LabelTable:
    """Parse the public-HPA table (``Image, Label_idx, in_trainset, ...``).

    The field id is the last ``/`` part of ``Image``. Rows that are in the Kaggle train set or
    have no label (or, as in the reference, no ``Cellline`` when that column exists) are dropped.
    """
    df, src = _read_csv(path)
    missing = {"Image", "Label_idx"} - set(df.columns)
    if missing:
        raise InputError(
            f"{src}: missing column(s) {sorted(missing)}; expected 'Image,Label_idx,in_trainset,...'"
        )
    ids, labels, images = [], [], []
    for i, row in enumerate(df.to_dict("records")):
        if not str(row["Label_idx"]).strip():
            continue
        if "in_trainset" in row and _truthy(row["in_trainset"]):
            continue
        if "Cellline" in row and not str(row["Cellline"]).strip():
            continue
        labels.append(
            parse_label_string(row["Label_idx"], f"{src} row {i + 2} (Image {row['Image']})")
        )
        ids.append(public_hpa_field_id(row["Image"]))
        images.append(str(row["Image"]))
    return LabelTable(ids, labels, src, images)


def read_labels(path: str | Path) -> LabelTable:
    """Read either table kind, chosen by its header; a table without fields is an InputError."""
    df, _ = _read_csv(path)
    reader = read_public_hpa_labels if "Label_idx" in df.columns else read_kaggle_labels
    table = reader(path)
    if not len(table):
        raise InputError(f"{path}: the table lists no fields; add one row per field")
    return table
