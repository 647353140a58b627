"""What image-level and cell-level prediction share: options, device and precision, loading a
fold's network, and the two output tables.

Outputs: a cell table (:mod:`hpasc.cells`: ``image_id, cell_id, p00…p18``) and an image-level
table (``image_id, p00…p18``); fields without cells have no cell rows but do appear in the
image-level table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hpasc.cells import PROB_COLUMNS, write_table
from hpasc.classes import NUM_CLASSES
from hpasc.errors import InputError
from hpasc.io import runs
from hpasc.io.atomic import atomic_open
from hpasc.io.store import Store
from hpasc.models.weights import load_weights, without_initial_weights

# re-exported: declared torch-free in hpasc.predict.options
from hpasc.predict.options import TTA_MODES, PredictOptions  # noqa: F401

# ------------------------------------------------------------------------------ image table


def make_image_table(image_ids: Sequence[str], probs: np.ndarray) -> pd.DataFrame:
    """Image-level table: ``image_id`` and ``p00…p18`` (float32)."""

    probs = np.asarray(probs, dtype=np.float32).reshape(len(image_ids), NUM_CLASSES)
    data = {"image_id": pd.Series([str(i) for i in image_ids], dtype=object)}
    data.update({c: probs[:, k] for k, c in enumerate(PROB_COLUMNS)})
    return pd.DataFrame(data)


def read_image_table(path: str | Path) -> pd.DataFrame:

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image-level table {path} not found")
    df = pd.read_parquet(path)
    missing = {"image_id", *PROB_COLUMNS} - set(df.columns)
    if missing:
        raise InputError(f"image-level table {path}: missing columns {sorted(missing)}")
    return df


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_open(path) as f:
        df.to_parquet(f, index=False)


def image_table_path(cell_table_path: str | Path) -> Path:
    """Default path of the image-level table beside a cell table: ``x.parquet`` → ``x.images.parquet``."""
    p = Path(cell_table_path)
    stem = p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name
    return p.with_name(f"{stem}.images.parquet")


def write_predictions(
    cells: pd.DataFrame,
    images: pd.DataFrame,
    cell_path: str | Path,
    image_path: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write both tables atomically; returns their paths."""

    cell_path = Path(cell_path)
    image_path = Path(image_path) if image_path else image_table_path(cell_path)
    write_table(cells, cell_path)
    _write_parquet(images, image_path)
    return cell_path, image_path


# ---------------------------------------------------------------------------------- models


def load_fold_model(
    load_config,
    model_cls,
    fold_path: str | Path,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
):
    """A fold folder's network (``model_cls(cfg.model)``, checkpoint weights) in eval mode, and
    its config (``load_config(fold_path/config.yaml)``).

    ``checkpoint``: "last", "best", a path, or None for the run's ``predict.checkpoint``.
    """

    fold = runs.open_fold(fold_path)
    cfg = load_config(fold.config_path)
    # weights come from the checkpoint: no ImageNet download, no init_from file needed
    model = model_cls(without_initial_weights(cfg.model))
    load_weights(model, fold.checkpoint(checkpoint or cfg.predict.checkpoint))
    return model.to(device).eval(), cfg


def load_fold_models(load_fold, fold_paths: Sequence[str | Path], options) -> tuple[Any, list, Any]:
    """``(device, models, cfg)``: the device ``options.device`` names, the networks of
    ``fold_paths`` on it (``load_fold(path, options.checkpoint, device)``) and the first fold's
    config; :class:`InputError` without folds."""
    if not fold_paths:
        raise InputError("no fold folders to predict with")
    device = resolve_device(options.device)
    loaded = [load_fold(p, options.checkpoint, device) for p in fold_paths]
    return device, [model for model, _ in loaded], loaded[0][1]


def inference_autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` (a config's ``predict.precision``) on ``device``.

    ``auto``: bf16 (else fp16) autocast on CUDA; ``32-true``: none (fp32, as the reference
    predicted); ``bf16-mixed`` / ``16-mixed``: that dtype. Always a no-op on CPU.
    """
    if device.type != "cuda" or precision == "32-true":
        return contextlib.nullcontext()
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif precision in ("bf16-mixed", "16-mixed"):
        dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    else:
        raise ValueError(f"unknown inference precision {precision!r}")
    return torch.autocast("cuda", dtype=dtype)


# -------------------------------------------------------------------------------- run level


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name as given (``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _open(path: str | None):

    return Store(path) if path else None
