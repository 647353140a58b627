"""Run-folder conventions shared by every trained model.

A *run* is one config trained on one or more folds::

    RUN_DIR/
      fold-0/
        config.yaml              resolved config (what was trained, overrides included)
        metrics.csv              per-step / per-epoch log (CSVLogger); tensorboard/ beside it
        checkpoints/last.ckpt    Lightning checkpoint of the last epoch (resume, predictions)
        checkpoints/best-EEE.ckpt  best epoch on the monitored validation metric
        valid_cells.parquet      predictions of this fold's validation fields (cell table)
        valid_images.parquet     … and their image-level probabilities
      fold-1/ …
"""

from __future__ import annotations

import re
from pathlib import Path

from hpasc.errors import InputError

CONFIG_NAME = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
VALID_CELLS = "valid_cells.parquet"
VALID_IMAGES = "valid_images.parquet"
_FOLD_RE = re.compile(r"^fold-(\d+)$")


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    return Path(run_dir) / f"fold-{fold}"


def fold_of(path: str | Path) -> int:
    """The fold index of a ``fold-<k>`` folder."""
    m = _FOLD_RE.match(Path(path).name)
    if not m:
        raise InputError(f"{path} is not a fold folder (expected a name like fold-0)")
    return int(m.group(1))


def is_fold_dir(path: str | Path) -> bool:
    path = Path(path)
    return bool(_FOLD_RE.match(path.name)) and (path / CONFIG_NAME).is_file()


def find_fold_dirs(paths: list[str | Path] | str | Path) -> list[Path]:
    """Fold folders named by ``paths``: each is a fold folder itself or a run holding ``fold-*``.

    Returned sorted by (run, fold); a path that is neither is an :class:`InputError`.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if is_fold_dir(p):
            found.append(p)
            continue
        children = (
            sorted((c for c in p.glob("fold-*") if is_fold_dir(c)), key=fold_of)
            if p.is_dir()
            else []
        )
        if not children:
            raise InputError(
                f"{p} is neither a run folder with fold-<k>/{CONFIG_NAME} nor a fold folder"
            )
        found.extend(children)
    return found


def checkpoint_dir(fold_path: str | Path) -> Path:
    return Path(fold_path) / CHECKPOINT_DIR


def last_checkpoint(fold_path: str | Path) -> Path:
    return checkpoint_dir(fold_path) / LAST_CHECKPOINT


def resolve_checkpoint(fold_path: str | Path, which: str = "last") -> Path:
    """``which`` = "last", "best", or a path to a checkpoint file."""
    fold_path = Path(fold_path)
    if which == "last":
        path = last_checkpoint(fold_path)
    elif which == "best":
        best = sorted(checkpoint_dir(fold_path).glob("best-*.ckpt"))
        if not best:
            raise InputError(f"{fold_path}: no best-*.ckpt (was a validation metric monitored?)")
        path = best[-1]
    else:
        path = Path(which)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path} (has {fold_path} finished an epoch?)")
    return path
