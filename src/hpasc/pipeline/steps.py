"""The step kinds of recipes: the registry and the built-in kinds, each calling one library function.

Parameters are the step's YAML keys (after ``${...}`` substitution). A kind takes only the keys it
documents; an unknown key is an error naming the closest valid ones. A kind declares which of its
keys hold paths (``paths=``): only those are anchored at the current directory
(:func:`hpasc.paths.anchor`) and fingerprinted as inputs; any other string (a class name, a
``preset``, an ``interpolation``) is a plain value, whatever it looks like.

A kind that calls a stage function takes that stage's options class (``options=``): its keys are
the step's own path keys (``paths``, ``outputs``) plus the fields of the class, loaded by
:func:`hpasc.options.from_mapping` (unknown keys and wrong types fail naming the step and the
key); the fields marked ``path=True`` / ``output=True`` are path keys too. The defaults are the
class's: the CLI, the library and the recipes share them.

This module imports nothing from :mod:`hpasc.pipeline.recipe`; the recipe machinery imports the registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpasc.cells import (
    PROB_COLUMNS,
    AverageOptions,
    average_tables,
    broadcast_image_table,
    read_table,
    write_table,
)
from hpasc.classes import read_labels
from hpasc.config import config_search_path
from hpasc.data.folds import FoldsOptions, make_folds, write_folds
from hpasc.errors import ConfigError
from hpasc.io.atomic import atomic_open, atomic_write
from hpasc.io.runs import find_fold_dirs
from hpasc.metric import EvaluateOptions, evaluate
from hpasc.options import from_mapping, path_keys, unknown_keys
from hpasc.predict.options import PredictOptions
from hpasc.prepare import CropOptions, ResizeOptions, crop_set, resize_set
from hpasc.report import MANIFEST, build_report
from hpasc.segment.sets import SegmentOptions, segment_set
from hpasc.submission import SubmitOptions, write_submission
from hpasc.synth import SynthOptions, synthesize

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TaskContext:
    """What a step kind receives besides its parameters."""

    step: str
    out: Path
    fold: int | None
    data: Path
    work: Path
    recipe_dir: Path
    n_folds: int | None
    log_file: Path
    resume: bool = False  # an interrupted run of this same task left partial outputs to keep


StepFn = Callable[[dict[str, Any], TaskContext], None]
#: the function of a kind with an options class: ``fn(own path keys, options, ctx)``
OptionsStepFn = Callable[[dict[str, Any], Any, TaskContext], None]


@dataclasses.dataclass(frozen=True)
class StepKind:
    """A registered step kind.

    Attributes
    ----------
    name : the ``kind:`` a recipe names.
    run : ``run(params, ctx)`` does the work.
    paths : the keys whose values (a string or a list of strings) are paths; a dotted key
        (``options.cell_model``) names a key of a mapping-valued key.
    outputs : those of ``paths`` that the step writes (not fingerprinted as its inputs).
    n_folds : ``n_folds(params, recipe_dir)``: how many folds ``folds: all`` means.
    settings : ``settings(params, recipe_dir)``: what the plan shows of a task.
    options : the options class the kind loads its other keys into (None: it takes raw keys).
    own : the kind's own keys (its top-level path keys and ``extra`` values), given to it
        beside the options.
    exclude : fields of ``options`` a recipe may not set (the kind sets them, or they do not
        apply).
    """

    name: str
    run: StepFn
    paths: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()
    n_folds: Callable[[dict[str, Any], Path], int] | None = None
    settings: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None
    options: type | None = None
    own: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()


STEP_KINDS: dict[str, StepKind] = {}


def step_kind(
    name: str,
    paths: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    n_folds: Callable[[dict[str, Any], Path], int] | None = None,
    settings: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
    *,
    options: type | None = None,
    optional: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Callable[[Callable], Callable]:
    """Register a step kind under ``name`` (see :class:`StepKind` for the hooks).

    ``paths`` names the keys holding input paths, ``outputs`` those holding output paths; every
    other key is a value, never a path. Without ``options`` the function is ``fn(params, ctx)``
    and checks its keys itself. With an options class it is ``fn(own, options, ctx)``: ``own``
    holds the top-level ``paths`` and ``outputs`` keys (required unless in ``optional``, then
    None when absent) and the keys of ``extra`` (values that are not stage options, with their
    defaults), ``options`` the other keys loaded into the class.
    """

    def deco(fn: Callable) -> Callable:
        in_paths, out_paths = path_keys(options) if options is not None else ((), ())
        own = frozenset(k for k in (*paths, *outputs, *(extra or {})) if "." not in k)
        kind = StepKind(
            name,
            fn,
            frozenset(paths) | frozenset(outputs) | frozenset(in_paths) | frozenset(out_paths),
            frozenset(outputs) | frozenset(out_paths),
            n_folds,
            settings,
            options,
            own,
            frozenset(exclude),
        )
        if options is not None:
            defaults = dict(extra or {})
            kind = dataclasses.replace(kind, run=_with_options(fn, kind, optional, defaults))
        STEP_KINDS[name] = kind
        return fn

    return deco


def _with_options(
    fn: OptionsStepFn, kind: StepKind, optional: tuple[str, ...], defaults: dict[str, Any]
) -> StepFn:
    required = kind.own - set(optional) - set(defaults)

    def run(params: dict[str, Any], ctx: TaskContext) -> None:
        loaded = load_options(kind, params, ctx.step)
        missing = sorted(k for k in required if k not in params)
        if missing:
            raise ConfigError(f"step '{ctx.step}': missing key(s) {missing}")
        own = {k: params.get(k, defaults.get(k)) for k in kind.own}
        fn(own, loaded, ctx)

    return run


def load_options(kind: StepKind, params: dict[str, Any], step: str) -> Any:
    """The options object of a step of ``kind`` from its parameters (its own keys left out).

    Raises :class:`ConfigError` naming the step and the key for an unknown key, a missing
    required one or a value of the wrong type.
    """
    if kind.options is None:
        raise ValueError(f"kind '{kind.name}' takes no options class")
    where = f"step '{step}'"
    allowed = [f.name for f in dataclasses.fields(kind.options) if f.name not in kind.exclude]
    unknown_keys(list(params), [*allowed, *kind.own], where)
    return from_mapping(kind.options, {k: v for k, v in params.items() if k not in kind.own}, where)


def _take(
    p: dict[str, Any], ctx: TaskContext, required: tuple[str, ...], optional: dict[str, Any]
) -> dict[str, Any]:
    """Check a step's keys: all ``required`` present, nothing unknown; fill defaults."""
    unknown_keys(list(p), [*required, *optional], f"step '{ctx.step}'")
    missing = [k for k in required if k not in p]
    if missing:
        raise ConfigError(f"step '{ctx.step}': missing key(s) {missing}")
    return {**optional, **p}


@step_kind("folds", paths=("labels",), options=FoldsOptions)
def folds_step(own: dict[str, Any], options: FoldsOptions, ctx: TaskContext) -> None:
    """labels: table or list of tables (each split separately, as the reference); n_folds; seed -> ${out}/folds.csv"""
    paths = _list(own["labels"])
    frames = [make_folds(read_labels(path), **vars(options)) for path in paths]
    write_folds(pd.concat(frames, ignore_index=True), Path(ctx.out) / "folds.csv")


@step_kind("group")
def group_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """No keys, no work: a name for the steps in its ``needs`` (``hpasc run --until NAME``)."""
    _take(p, ctx, (), {})


@step_kind("synth", options=SynthOptions)
def synth_step(own: dict[str, Any], options: SynthOptions, ctx: TaskContext) -> None:
    """n_images, size, seed, bit_depth -> ${out}/{images,masks,train.csv,solution.csv}"""
    synthesize(ctx.out, options, overwrite=True)


@step_kind("resize", paths=("input",), outputs=("out",), options=ResizeOptions, optional=("out",))
def resize_step(own: dict[str, Any], options: ResizeOptions, ctx: TaskContext) -> None:
    """input, size, masks (bool), interpolation, dtype, eight_bit, workers, out (default ${out})"""
    resize_set(own["input"], own["out"] or ctx.out, options, overwrite=not ctx.resume)


@step_kind(
    "crop", paths=("images", "masks"), outputs=("out",), options=CropOptions, optional=("out",)
)
def crop_step(own: dict[str, Any], options: CropOptions, ctx: TaskContext) -> None:
    """images, masks, size, orig_masks, workers, out (default ${out})"""
    crop_set(own["images"], own["masks"], own["out"] or ctx.out, options, overwrite=not ctx.resume)


@step_kind(
    "segment",
    paths=("images", "method_options.nuclei_model", "method_options.cell_model"),
    outputs=("out",),
    options=SegmentOptions,
    optional=("out",),
)
def segment_step(own: dict[str, Any], options: SegmentOptions, ctx: TaskContext) -> None:
    """images, method (classical|hpa-unet|cellpose), preset (hpa-unet: hpacellseg|pfcell-2021|fast),
    eight_bit (ceil257|opencv), nuclei_out, workers, batch_size, options, out"""
    segment_set(own["images"], own["out"] or ctx.out, options, overwrite=not ctx.resume)


def _locate_config(name: str, recipe_dir: Path) -> tuple[Path | None, list[Path]]:
    """A config given by path, relative to the recipe's folder, or inside hpasc's shipped configs."""
    candidates = [Path(name), recipe_dir / name, *(d / name for d in config_search_path())]
    return next((c for c in candidates if c.is_file()), None), candidates


def find_config(name: str, ctx: TaskContext) -> Path:
    found, candidates = _locate_config(name, ctx.recipe_dir)
    if found is None:
        looked = ", ".join(str(c.parent) for c in candidates)
        raise ConfigError(f"step '{ctx.step}': config '{name}' not found (looked in: {looked})")
    return found


def _load(dotted: str):
    module, fn = dotted.split(":")
    return getattr(importlib.import_module(module), fn)


def _config_folds(loader: str):
    """How many folds ``folds: all`` means: the config's ``data.n_folds`` (after overrides of it)."""

    def count(p: dict[str, Any], recipe_dir: Path) -> int:
        found, _ = _locate_config(str(p["config"]), recipe_dir)
        if found is None:
            return 0
        overrides = [o for o in p.get("overrides", []) or [] if o.startswith("data.n_folds=")]
        return _load(loader)(found, overrides).data.n_folds

    return count


def _config_settings(loader: str, keys: tuple[str, ...]):
    """The plan's view of a training step: ``keys`` of its config after the step's overrides."""

    def settings(p: dict[str, Any], recipe_dir: Path) -> dict[str, Any]:
        found, _ = _locate_config(str(p["config"]), recipe_dir)
        if found is None:
            return {}
        cfg = _load(loader)(found, list(p.get("overrides", []) or []))
        out = {}
        for key in keys:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            out[key] = value
        return out

    return settings


_CAM_LOADER = "hpasc.runconfig.image_level:load_image_level_config"
_CELL_LOADER = "hpasc.runconfig.cell_level:load_cell_level_config"
#: what the plan shows of a training task (the settings where the reference and hpasc differ)
CAM_SETTINGS = ("trainer.precision", "predict.upsample", "predict.precision")
CELL_SETTINGS = ("model.input_range", "data.sampling", "trainer.precision", "predict.precision")


def _in_folder(path: str, name: str) -> Path:
    """A file given directly, or the file ``name`` inside a step's output folder."""
    return Path(path) / name if Path(path).is_dir() else Path(path)


def _train(p: dict[str, Any], ctx: TaskContext, loader: str, trainer: str) -> None:
    if ctx.fold is None:
        raise ConfigError(
            f"step '{ctx.step}': training steps need 'folds' (all, a fold index or a list)"
        )
    p = _take(p, ctx, ("config",), {"overrides": []})
    cfg = _load(loader)(find_config(p["config"], ctx), list(p["overrides"] or []))
    _load(trainer)(cfg, ctx.fold, ctx.out.parent, resume=ctx.resume, fold_path=ctx.out)


@step_kind(
    "train-image-level",
    n_folds=_config_folds(_CAM_LOADER),
    settings=_config_settings(_CAM_LOADER, CAM_SETTINGS),
)
def train_image_level_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """config, overrides (list of a.b=value; paths may use ${data}, ${step:NAME}); with folds"""
    _train(p, ctx, _CAM_LOADER, "hpasc.train.image_level:train_fold")


@step_kind(
    "train-cell-level",
    n_folds=_config_folds(_CELL_LOADER),
    settings=_config_settings(_CELL_LOADER, CELL_SETTINGS),
)
def train_cell_level_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """config, overrides; with folds"""
    _train(p, ctx, _CELL_LOADER, "hpasc.train.cell_level:train_fold")


def _list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@step_kind("oof", paths=("runs",))
def oof_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """runs: trained step folder(s) -> ${out}/cells.parquet (+ images.parquet): out-of-fold predictions"""
    # torch and timm take seconds to import: only the prediction kinds load them, so that the
    # task process of every other kind (one per task, see pipeline.engine) starts at once
    from hpasc.predict.base import write_predictions
    from hpasc.predict.oof import join_oof  # torch, as above

    p = _take(p, ctx, ("runs",), {})
    cells, images = join_oof(_list(p["runs"]))
    write_predictions(cells, images, ctx.out / "cells.parquet", ctx.out / "images.parquet")


@step_kind("average", paths=("tables",), options=AverageOptions)
def average_step(own: dict[str, Any], options: AverageOptions, ctx: TaskContext) -> None:
    """tables: cell tables (files or step folders holding cells.parquet), weights, allow_missing -> ${out}/cells.parquet"""
    paths = [_in_folder(t, "cells.parquet") for t in _list(own["tables"])]
    write_table(average_tables(paths, **vars(options)), ctx.out / "cells.parquet")
    images = [q.with_name("images.parquet") for q in paths]
    if all(q.is_file() for q in images):  # image-level tables average the same way (keys: image_id)
        _average_image_tables(images, options.weights, ctx.out / "images.parquet")


def _average_image_tables(paths: list[Path], weights, out: Path) -> None:
    frames = [pd.read_parquet(q).set_index("image_id")[PROB_COLUMNS] for q in paths]
    w = np.ones(len(frames)) if weights is None else np.asarray(weights, float)
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index)
    total = sum(wi * f.loc[common].to_numpy(np.float64) for wi, f in zip(w, frames, strict=True))
    df = pd.DataFrame((total / w.sum()).astype(np.float32), columns=PROB_COLUMNS)
    df.insert(0, "image_id", list(common))
    with atomic_open(out) as f:
        df.to_parquet(f, index=False)


@step_kind(
    "predict-image-level",
    paths=("runs", "images", "masks"),
    options=PredictOptions,
    exclude=("progress",),
)
def predict_image_level_step(
    own: dict[str, Any], options: PredictOptions, ctx: TaskContext
) -> None:
    """runs, images, masks, tta, upsample, precision, checkpoint, batch_size, num_workers, device
    (None: the runs' predict.*) -> ${out}/cells.parquet + images.parquet (mean of the folds)"""
    # torch and timm take seconds to import: only the prediction kinds load them, so that the
    # task process of every other kind (one per task, see pipeline.engine) starts at once
    from hpasc.predict.base import write_predictions
    from hpasc.predict.image_level import predict_fields  # torch, as above

    folds = find_fold_dirs(_list(own["runs"]))
    cells, images = predict_fields(folds, own["images"], own["masks"], options)
    write_predictions(cells, images, ctx.out / "cells.parquet", ctx.out / "images.parquet")


@step_kind(
    "predict-cell-level",
    paths=("runs", "crops"),
    options=PredictOptions,
    exclude=("progress", "upsample"),
)
def predict_cell_level_step(own: dict[str, Any], options: PredictOptions, ctx: TaskContext) -> None:
    """runs, crops, tta, precision, checkpoint, batch_size, num_workers, device (None: the runs'
    predict.*) -> ${out}/cells.parquet (+ images.parquet; mean of the folds)"""
    # torch and timm take seconds to import: only the prediction kinds load them, so that the
    # task process of every other kind (one per task, see pipeline.engine) starts at once
    from hpasc.predict.base import write_predictions
    from hpasc.predict.cell_level import predict_cell_fields  # torch, as above

    cells, images = predict_cell_fields(find_fold_dirs(_list(own["runs"])), own["crops"], options)
    write_predictions(cells, images, ctx.out / "cells.parquet", ctx.out / "images.parquet")


@step_kind("submit", paths=("masks", "predictions"), options=SubmitOptions)
def submit_step(own: dict[str, Any], options: SubmitOptions, ctx: TaskContext) -> None:
    """masks (original size), predictions (tables or step folders), weights, allow_missing,
    edge/center thresholds, scale_thresholds_with_size, min_confidence, strict -> ${out}/submission.csv"""
    tables = [_in_folder(t, "cells.parquet") for t in _list(own["predictions"])]
    summary = write_submission(own["masks"], tables, ctx.out / "submission.csv", options)
    log.info("submission: %s", summary)


def _scores(result) -> dict[str, Any]:
    return {"mAP": result.map, "per_class": {str(k): v for k, v in result.per_class.items()}}


@step_kind(
    "evaluate",
    paths=("solution", "submission", "baseline"),
    options=EvaluateOptions,
    optional=("baseline",),
    extra={"baseline_name": "baseline"},
)
def evaluate_step(own: dict[str, Any], options: EvaluateOptions, ctx: TaskContext) -> None:
    """solution, submission (file or step folder), baseline (optional submission), baseline_name,
    iou, mode -> ${out}/metric.json"""
    result = evaluate(own["solution"], _in_folder(own["submission"], "submission.csv"), options)
    doc: dict[str, Any] = {**_scores(result), "n_gt": {str(k): v for k, v in result.n_gt.items()}}
    if own["baseline"]:
        base = evaluate(own["solution"], _in_folder(own["baseline"], "submission.csv"), options)
        doc["baseline"] = {"name": own["baseline_name"], **_scores(base)}
    atomic_write(ctx.out / "metric.json", json.dumps(doc, indent=1))


@step_kind("broadcast", paths=("cells", "images"))
def broadcast_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """cells (table or step folder: which cells), images (image-level table or step folder) -> ${out}/cells.parquet

    Every cell gets its field's image-level probabilities: the baseline that ignores cells.
    """
    p = _take(p, ctx, ("cells", "images"), {})
    cells = read_table(_in_folder(p["cells"], "cells.parquet"))
    images = pd.read_parquet(_in_folder(p["images"], "images.parquet"))
    write_table(broadcast_image_table(cells, images), ctx.out / "cells.parquet")


@step_kind("report", paths=("images", "masks", "cells", "image_level", "metric", "runs"))
def report_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """images, masks, cells (step folder or table), image_level, metric (step folder), runs, title -> ${out}/report.html"""
    p = _take(
        p,
        ctx,
        ("images", "masks", "cells"),
        {"image_level": None, "metric": None, "runs": [], "title": ""},
    )

    def table(path: str | None, name: str) -> str | None:
        if not path:
            return None
        shutil.copyfile(_in_folder(path, name), ctx.out / name)
        return name

    manifest = {
        "title": p["title"] or ctx.step,
        "images": p["images"],
        "masks": p["masks"],
        "cells": table(p["cells"], "cells.parquet"),
        "image_level": table(p["image_level"], "images.parquet"),
        "metric": table(p["metric"], "metric.json"),
        "runs": _list(p["runs"]),
    }
    atomic_write(ctx.out / MANIFEST, json.dumps({k: v for k, v in manifest.items() if v}, indent=1))
    build_report(ctx.out, ctx.out / "report.html")
