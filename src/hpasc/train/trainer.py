"""The one Lightning ``Trainer`` factory of hpasc (image-level and cell-level models).

The LightningModule holds the science; everything about devices, precision, distributed
training, checkpoints, logging and progress is decided here from a :class:`TrainerConfig`.

* devices: ``accelerator: auto`` uses the GPUs when present; ``devices``/``num_nodes`` spread
  training with DDP (``strategy: auto`` → ``ddp`` for more than one device or node). Launch with
  ``torchrun`` or ``srun`` (SLURM): Lightning reads the environment they set.
* precision: ``auto`` → ``bf16-mixed`` on GPUs that support it, ``16-mixed`` on other GPUs,
  ``32-true`` on CPU.
* checkpoints in ``<fold dir>/checkpoints``: ``last.ckpt`` every epoch (resume, prediction) and
  ``best-EEE.ckpt`` on the monitored metric.
* loggers: CSV (``metrics.csv``) and TensorBoard by default; ``wandb`` / ``mlflow`` when listed
  and installed.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import DDPStrategy

from hpasc.errors import ConfigError
from hpasc.io.runs import BEST_PREFIX, LAST_CHECKPOINT, checkpoint_dir, metrics_path
from hpasc.progress import CONSOLE_KWARGS
from hpasc.runconfig.trainer import LOGGERS, TrainerConfig, device_count
from hpasc.train.callbacks import EpochSeed, ForgetUnfinishedSteps


def _is_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(cfg: TrainerConfig) -> str:
    """``auto`` → bf16-mixed / 16-mixed on GPU, 32-true elsewhere."""
    if cfg.precision != "auto":
        return cfg.precision
    if _is_gpu(cfg.accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _devices_arg(devices: str) -> Any:
    text = str(devices).strip()
    if text == "auto":
        return "auto"
    if "," in text or text.startswith("["):
        return [int(d) for d in text.strip("[]").split(",") if d.strip()]
    return int(text)


def resolve_strategy(cfg: TrainerConfig) -> Any:
    """``auto`` → DDP (without unused-parameter search) for several devices or nodes."""
    if cfg.strategy != "auto":
        return cfg.strategy
    n = device_count(cfg.devices)
    if (n is not None and n > 1) or cfg.num_nodes > 1:
        return DDPStrategy(find_unused_parameters=False)
    return "auto"


def _limit(value: float) -> float | int:
    return int(value) if value > 1 else float(value)


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` (a resumed run's) keeps its rows:
    the stock writer deletes it when it starts."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class AppendingCSVLogger(CSVLogger):
    """A CSVLogger writing ``save_dir/metrics.csv`` that keeps the rows of earlier (resumed)
    sessions."""

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(cfg: TrainerConfig, run_dir: Path, name: str = "") -> list:
    """CSV (``metrics.csv`` in ``run_dir``), TensorBoard (``run_dir/tensorboard``), W&B, MLflow."""
    out = []
    for kind in cfg.loggers:
        if kind == "csv":
            out.append(AppendingCSVLogger(save_dir=str(run_dir), name="", version=""))
        elif kind == "tensorboard":
            out.append(
                pl_loggers.TensorBoardLogger(
                    save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
                )
            )
        elif kind == "wandb":
            _require("wandb", "wandb")
            out.append(
                pl_loggers.WandbLogger(
                    project=cfg.logger_project, name=name or None, save_dir=str(run_dir)
                )
            )
        elif kind == "mlflow":
            _require("mlflow", "mlflow")
            out.append(
                pl_loggers.MLFlowLogger(
                    experiment_name=cfg.logger_project,
                    run_name=name or None,
                    save_dir=str(run_dir / "mlruns"),
                )
            )
        else:
            raise ConfigError(
                f"trainer.loggers: unknown logger {kind!r}; expected some of {LOGGERS}"
            )
    return out


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"trainer.loggers asks for {module} but it is not installed (pip install {package})"
        )


def build_trainer(
    cfg: TrainerConfig,
    run_dir: str | Path,
    name: str = "",
    callbacks: list | None = None,
    seed: int | None = None,
):
    """A ``lightning.Trainer`` writing checkpoints and logs into ``run_dir`` (a fold folder).

    Every epoch starts by seeding the global generators from ``(seed, epoch)`` (default
    ``cfg.seed``; :class:`~hpasc.train.callbacks.EpochSeed`), so that a resumed run repeats
    the draws of an uninterrupted one.

    Examples
    --------
    >>> trainer = build_trainer(TrainerConfig(max_epochs=2), "runs/tiny/fold-0")
    >>> trainer.fit(module, train_loader, valid_loader, ckpt_path=None)
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = checkpoint_dir(run_dir)
    # without a monitor, top-1 keeps the newest epoch: last.ckpt, overwritten every epoch
    checkpoints = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename=Path(LAST_CHECKPOINT).stem,
            save_top_k=1,
            monitor=None,
            enable_version_counter=False,
        )
    ]
    if cfg.monitor:
        checkpoints.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir), filename=BEST_PREFIX + "{epoch:03d}", monitor=cfg.monitor, mode=cfg.monitor_mode,
                save_top_k=1, auto_insert_metric_name=False,
            )
        )  # fmt: skip
    loggers = build_loggers(cfg, run_dir, name)
    extra = [LearningRateMonitor(logging_interval="epoch")] if loggers else []
    if "csv" in cfg.loggers:
        extra.append(ForgetUnfinishedSteps(metrics_path(run_dir)))
    if cfg.progress_bar:  # rich, as every other bar of hpasc (not Lightning's default)
        extra.append(RichProgressBar(console_kwargs=dict(CONSOLE_KWARGS)))
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=_devices_arg(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=resolve_strategy(cfg),
        precision=resolve_precision(cfg),
        # SyncBatchNorm needs GPUs; parallel strategies apply it, single-device ones ignore it
        sync_batchnorm=cfg.sync_batchnorm and _is_gpu(cfg.accelerator),
        max_epochs=cfg.max_epochs,
        deterministic=cfg.deterministic,
        benchmark=cfg.cudnn_benchmark,
        log_every_n_steps=cfg.log_every_n_steps,
        limit_train_batches=_limit(cfg.limit_train_batches),
        limit_val_batches=_limit(cfg.limit_val_batches),
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        num_sanity_val_steps=cfg.num_sanity_val_steps,
        gradient_clip_val=cfg.gradient_clip_val,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        logger=loggers or False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        callbacks=[*checkpoints, *extra, EpochSeed(cfg.seed if seed is None else seed)]
        + list(callbacks or []),
        default_root_dir=str(run_dir),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and DataLoader workers) for a reproducible run."""
    L.seed_everything(seed, workers=True, verbose=False)
