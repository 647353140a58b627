"""Steps every per-fold training entry point shares (image-level and cell-level models).

:func:`open_fold` resolves the fold folder and the checkpoint to resume from, refusing to
overwrite a trained fold; :func:`predict_after_fit` writes the fold's out-of-fold predictions on
rank 0 and waits for them on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpasc.errors import OutputError
from hpasc.train import runs


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
    return out, (str(last) if resume and last.exists() else None)


def predict_after_fit(trainer, cfg: Any, out: Path, predict_valid: Callable[..., Any]) -> None:
    """With ``cfg.predict.after_fit``: ``predict_valid(out, device=…)`` on rank 0, then a barrier."""
    if not cfg.predict.after_fit:
        return
    if trainer.is_global_zero:
        on_gpu = trainer.strategy.root_device.type == "cuda"
        predict_valid(out, device="cuda" if on_gpu else "cpu")
    trainer.strategy.barrier("valid-predictions")
