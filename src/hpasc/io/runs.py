"""The run folder: one owner for where a trained model's files are and what they say.

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

Readers open a run with :func:`open_run` (or a list of runs and fold folders with
:func:`find_folds`) and ask the :class:`RunFolder` / :class:`Fold` for its facts: kind, folds,
resolved config, input size, checkpoints, logs and validation tables. Training writes through
the path functions below (:func:`fold_dir`, :func:`config_path`, :func:`checkpoint_dir`, …),
so both sides share one layout. The config is the YAML mapping as written; typed loading stays
with the config schemas (``hpasc.runconfig.image_level`` / ``cell_level``), above this layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml

from hpasc.config import to_yaml
from hpasc.errors import InputError
from hpasc.io import cropset
from hpasc.io import images as imio
from hpasc.io.atomic import atomic_write
from hpasc.io.store import Store
from hpasc.paths import anchor

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_PREFIX = "best-"  # best-EEE.ckpt: the epoch of the best monitored value
BEST_PATTERN = f"{BEST_PREFIX}*.ckpt"
VALID_CELLS = "valid_cells.parquet"
VALID_IMAGES = "valid_images.parquet"
IMAGE_LEVEL: Literal["image-level"] = "image-level"
CELL_LEVEL: Literal["cell-level"] = "cell-level"
RunKind = Literal["image-level", "cell-level"]
_FOLD_RE = re.compile(r"^fold-(\d+)$")

# ------------------------------------------------------------------------------ writer side


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """Folder of fold ``fold`` of the run ``run_dir``."""
    return Path(run_dir) / f"fold-{fold}"


def config_path(fold_path: str | Path) -> Path:
    return Path(fold_path) / CONFIG_NAME


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config ``cfg`` (a config dataclass) to ``path`` atomically."""
    atomic_write(path, to_yaml(cfg))


def metrics_path(fold_path: str | Path) -> Path:
    return Path(fold_path) / METRICS_NAME


def checkpoint_dir(fold_path: str | Path) -> Path:
    return Path(fold_path) / CHECKPOINT_DIR


def last_checkpoint(fold_path: str | Path) -> Path:
    return checkpoint_dir(fold_path) / LAST_CHECKPOINT


def valid_tables(fold_path: str | Path) -> tuple[Path, Path]:
    """(cell table, image-level table) of a fold's validation predictions."""
    return Path(fold_path) / VALID_CELLS, Path(fold_path) / VALID_IMAGES


def fold_of(path: str | Path) -> int:
    """The fold index of a ``fold-<k>`` folder."""
    m = _FOLD_RE.match(Path(path).name)
    if not m:
        raise InputError(f"{path} is not a fold folder (expected a name like fold-0)")
    return int(m.group(1))


def is_fold_dir(path: str | Path) -> bool:
    path = Path(path)
    return bool(_FOLD_RE.match(path.name)) and config_path(path).is_file()


# ------------------------------------------------------------------------------ reader side


def kind_of_config(config: dict[str, Any]) -> RunKind:
    """Cell-level when every data source names a crop set, image-level otherwise."""
    sources = (config.get("data") or {}).get("sources") or []
    cell = bool(sources) and all(isinstance(s, dict) and "crops" in s for s in sources)
    return CELL_LEVEL if cell else IMAGE_LEVEL


@dataclass(frozen=True)
class Fold:
    """One trained fold folder: its index and resolved config, and where its files are."""

    path: Path
    index: int
    config: dict[str, Any]

    @property
    def kind(self) -> RunKind:
        return kind_of_config(self.config)

    @property
    def config_path(self) -> Path:
        return config_path(self.path)

    @property
    def metrics_path(self) -> Path:
        return metrics_path(self.path)

    @property
    def last_checkpoint(self) -> Path:
        return last_checkpoint(self.path)

    @property
    def best_checkpoint(self) -> Path | None:
        """The newest ``best-*.ckpt``, None when no validation metric was monitored."""
        best = sorted(checkpoint_dir(self.path).glob(BEST_PATTERN))
        return best[-1] if best else None

    @property
    def valid_cells(self) -> Path:
        return valid_tables(self.path)[0]

    @property
    def valid_images(self) -> Path:
        return valid_tables(self.path)[1]

    def checkpoint(self, which: str = "last") -> Path:
        """The checkpoint file of ``which`` ("last", "best", or a path); it must exist."""
        if which == "best":
            path = self.best_checkpoint
            if path is None:
                raise InputError(
                    f"{self.path}: no {CHECKPOINT_DIR}/{BEST_PATTERN} (was a validation metric "
                    "monitored?); use checkpoint last"
                )
        else:
            path = self.last_checkpoint if which == "last" else Path(which)
        if not path.is_file():
            raise InputError(f"checkpoint not found: {path} (has {self.path} finished an epoch?)")
        return path

    @cached_property
    def input_size(self) -> int | None:
        """Side of the fields (image-level) or crops (cell-level) this fold was trained on.

        Read from its first data source; None when that data is no longer readable (moved).
        """
        data = self.config.get("data") or {}
        sources = data.get("sources") or []
        if not sources:
            return None
        key = "crops" if self.kind == CELL_LEVEL else "images"
        url = anchor(sources[0].get(key), data.get("root") or None)
        try:
            store = Store(url)
            if self.kind == CELL_LEVEL:
                for fid in cropset.list_ids(store):
                    index = cropset.read_index(store, fid)
                    if len(index.cell_ids):
                        return int(index.shape[-1])
                return None
            ids = imio.list_field_ids(store)
            return int(imio.read_channel(store, ids[0], "blue").shape[0]) if ids else None
        except Exception:  # the training data may have moved: callers fall back to an option
            return None


@dataclass(frozen=True)
class RunFolder:
    """A trained run: its folder and its folds (sorted by index), all of one kind."""

    path: Path
    folds: tuple[Fold, ...]

    @property
    def kind(self) -> RunKind:
        return self.folds[0].kind

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config of the first fold (folds differ only in ``fold``-free keys)."""
        return self.folds[0].config

    @property
    def fold_indices(self) -> list[int]:
        return [f.index for f in self.folds]

    @property
    def input_size(self) -> int | None:
        return self.folds[0].input_size

    def fold(self, index: int) -> Fold:
        for f in self.folds:
            if f.index == index:
                return f
        raise InputError(f"{self.path} has no fold-{index} (it has folds {self.fold_indices})")


def open_fold(path: str | Path) -> Fold:
    """The fold folder ``path`` (``fold-<k>`` holding ``config.yaml``)."""
    path = Path(path)
    index = fold_of(path)
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise InputError(f"{path} is not a trained fold folder: {CONFIG_NAME} is missing")
    try:
        config = yaml.safe_load(cfg_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read {cfg_file}: {exc}; re-train the fold") from exc
    if not isinstance(config, dict):
        raise InputError(f"{cfg_file} is not a config mapping; re-train the fold")
    return Fold(path, index, config)


def open_run(path: str | Path) -> RunFolder:
    """The run folder ``path`` (holding ``fold-<k>/config.yaml``), or the run of one fold folder.

    Raises
    ------
    InputError
        ``path`` is neither, or its folds mix image-level and cell-level models.
    """
    path = Path(path)
    if is_fold_dir(path):
        return RunFolder(path.parent, (open_fold(path),))
    children = [c for c in path.glob("fold-*") if is_fold_dir(c)] if path.is_dir() else []
    if not children:
        what = "does not exist" if not path.exists() else f"has no fold-<k>/{CONFIG_NAME}"
        raise InputError(
            f"{path} is not a run folder: it {what} (give the folder a training wrote)"
        )
    folds = tuple(sorted((open_fold(c) for c in children), key=lambda f: f.index))
    kinds = {f.kind for f in folds}
    if len(kinds) > 1:
        raise InputError(f"{path} mixes {' and '.join(sorted(kinds))} folds; one model per run")
    return RunFolder(path, folds)


def find_folds(paths: Sequence[str | Path] | str | Path) -> list[Fold]:
    """The folds of ``paths``, each a run folder or a fold folder, sorted by (run, fold)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [f for p in paths for f in open_run(p).folds]


def find_fold_dirs(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """The fold folders of :func:`find_folds`."""
    return [f.path for f in find_folds(paths)]
