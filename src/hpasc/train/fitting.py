"""Steps every per-fold training entry point shares (image-level and cell-level models).

:func:`folds_to_train` parses ``--fold``; :func:`absolute_data_root` makes the saved config
independent of the working directory; :func:`open_fold` resolves the fold folder and the
checkpoint to resume from, refusing to overwrite a trained fold; :func:`fold_trainer` builds
the fold's Trainer and writes its resolved config; :func:`predict_after_fit`
writes the fold's out-of-fold predictions on rank 0 (:func:`write_fold_valid`) and waits for
them on every rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpasc.config import read_yaml, to_dict
from hpasc.errors import ConfigError, OutputError
from hpasc.io import runs
from hpasc.models.weights import check_checkpoint
from hpasc.paths import anchor
from hpasc.predict.base import PredictOptions, write_predictions
from hpasc.train.trainer import build_trainer


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
    root = anchor(cfg.data.root)
    if root == cfg.data.root:
        return cfg
    data = dataclasses.replace(cfg.data, root=root)
    return dataclasses.replace(cfg, data=data)


# Config keys a resumed run may change: engineering (devices, epochs, logging) and prediction.
# Everything else shapes the model, so it must equal what the fold was trained with.
_FREE_ON_RESUME = ("trainer.", "predict.", "data.num_workers", "data.valid_batch_size")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()
        }
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def _check_resumed_config(out: Path, cfg: Any) -> None:
    """A resumed fold continues only with the config it was trained with (``config.yaml``)."""
    saved_file = runs.config_path(out)
    if not saved_file.is_file():
        return
    saved, now = _flat(read_yaml(saved_file, "run config")), _flat(to_dict(cfg))
    changed = [
        k
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k) and (k == "trainer.seed" or not k.startswith(_FREE_ON_RESUME))
    ]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} other key(s))" if len(changed) > 1 else ""
        raise OutputError(
            f"{out} was trained with {key}={saved.get(key)!r}, not {now.get(key)!r}{more}; "
            "resume with the same config or choose another --run-dir"
        )


def open_fold(
    run_dir: str | Path,
    fold: int,
    resume: bool = False,
    fold_path: str | Path | None = None,
    cfg: Any = None,
) -> tuple[Path, str | None]:
    """The fold folder (``run_dir/fold-<fold>`` or ``fold_path``) and the checkpoint to resume.

    ``resume`` continues from ``checkpoints/last.ckpt`` when it exists (None: a fresh start);
    without it, a fold folder that already holds a checkpoint is an :class:`OutputError`, and
    so is resuming with a ``cfg`` that differs from the fold's ``config.yaml`` in a key that
    shapes the model (anything but ``trainer.*`` other than the seed, ``predict.*``, workers).
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
    if cfg is not None:
        _check_resumed_config(out, cfg)

    # Lightning would fail inside fit() with a page of torch advice; say it in one line first
    check_checkpoint(last, fix=f"delete {out} to train this fold afresh, or pass another --run-dir")
    return out, str(last)


def fold_trainer(cfg: Any, fold: int, out: Path, kind: str, callbacks: list):
    """The Trainer of fold ``fold`` (seeded ``trainer.seed + fold``, named ``<cfg.name or
    kind>/fold-k``) writing into ``out``; rank 0 writes the resolved config there first."""
    trainer = build_trainer(
        cfg.trainer, out, name=f"{cfg.name or kind}/fold-{fold}", callbacks=callbacks,
        seed=cfg.trainer.seed + fold,
    )  # fmt: skip
    if trainer.is_global_zero:
        runs.dump_config(cfg, runs.config_path(out))
    return trainer


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
    Each model kind binds its own: ``predict_fold_valid = partial(write_fold_valid, …)``.
    """
    fold_path = Path(fold_path)
    cells, images = predict_valid(fold_path, PredictOptions(device=device, progress=progress))
    return write_predictions(cells, images, *runs.valid_tables(fold_path))
