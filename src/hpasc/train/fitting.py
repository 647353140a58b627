"""Steps every per-fold training entry point shares (image-level and cell-level models).

:func:`folds_to_train` parses ``--fold``; :func:`absolute_data_root` makes the saved config
independent of the working directory; :func:`open_fold` resolves the fold folder and the
checkpoint to resume from, refusing to overwrite a trained fold; :func:`predict_after_fit`
writes the fold's out-of-fold predictions on rank 0 (:func:`write_fold_valid`) and waits for
them on every rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpasc.errors import ConfigError, OutputError
from hpasc.train import runs


def folds_to_train(cfg: Any, fold: str) -> list[int]:
    """``"all"`` → 0..n_folds−1; ``"3"`` → [3]; ``"0,2"`` → [0, 2] (``cfg.data.n_folds`` folds)."""
    if fold == "all":
        return list(range(cfg.data.n_folds))
    try:
        folds = [int(f) for f in str(fold).split(",") if f.strip()]
    except ValueError:
        raise ConfigError(
            f"--fold must be 'all', an index or a list like 0,2; got {fold!r}"
        ) from None
    bad = [f for f in folds if not 0 <= f < cfg.data.n_folds]
    if bad or not folds:
        raise ConfigError(f"--fold {fold}: folds must lie in 0..{cfg.data.n_folds - 1}")
    return folds


def absolute_data_root(cfg: Any) -> Any:
    """``cfg`` with ``data.root`` as an absolute path, so the saved config works from any directory."""
    from hpasc.paths import anchor

    root = anchor(cfg.data.root)
    if root == cfg.data.root:
        return cfg
    data = dataclasses.replace(cfg.data, root=root)
    return dataclasses.replace(cfg, data=data)


def open_fold(
    run_dir: str | Path, fold: int, resume: bool = False, fold_path: str | Path | None = None
) -> tuple[Path, str | None]:
    """The fold folder (``run_dir/fold-<fold>`` or ``fold_path``) and the checkpoint to resume.

    ``resume`` continues from ``checkpoints/last.ckpt`` when it exists (None: a fresh start);
    without it, a fold folder that already holds a checkpoint is an :class:`OutputError`.
    """
    out = Path(fold_path) if fold_path is not None else runs.fold_dir(run_dir, fold)
    last = runs.last_checkpoint(out)
    if last.exists() and not resume:
        raise OutputError(
            f"{out} already holds a trained model ({last}); pass --resume to continue it or "
            "choose another --run-dir"
        )
    if not (resume and last.exists()):
        return out, None
    from hpasc.models.weights import check_checkpoint

    # Lightning would fail inside fit() with a page of torch advice; say it in one line first
    check_checkpoint(last, fix=f"delete {out} to train this fold afresh, or pass another --run-dir")
    return out, str(last)


def predict_after_fit(trainer, cfg: Any, out: Path, predict_valid: Callable[..., Any]) -> None:
    """With ``cfg.predict.after_fit``: ``predict_valid(out, device=…)`` on rank 0, then a barrier."""
    if not cfg.predict.after_fit:
        return
    if trainer.is_global_zero:
        on_gpu = trainer.strategy.root_device.type == "cuda"
        predict_valid(out, device="cuda" if on_gpu else "cpu")
    trainer.strategy.barrier("valid-predictions")


def write_fold_valid(
    predict_valid: Callable[..., tuple[Any, Any]],
    fold_path: str | Path,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``valid_cells.parquet`` and ``valid_images.parquet`` of a trained fold.

    ``predict_valid(fold_path, options)`` returns the fold's (cell table, image-level table).
    """
    from hpasc.predict import PredictOptions, write_predictions

    fold_path = Path(fold_path)
    cells, images = predict_valid(fold_path, PredictOptions(device=device, progress=progress))
    return write_predictions(
        cells, images, fold_path / runs.VALID_CELLS, fold_path / runs.VALID_IMAGES
    )
