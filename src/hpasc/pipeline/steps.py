"""The step kinds of recipes: the registry and the built-in kinds, each calling one library function.

Parameters are the step's YAML keys (after ``${...}`` substitution). A kind takes only the keys it
documents; an unknown key is an error naming the closest valid ones. A kind declares which of its
keys hold paths (``paths=``): only those are anchored at the current directory
(:func:`hpasc.paths.anchor`) and fingerprinted as inputs; any other string (a class name, a
``preset``, an ``interpolation``) is a plain value, whatever it looks like.

This module imports nothing from :mod:`hpasc.pipeline.recipe`; the recipe machinery imports the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpasc.errors import ConfigError
from hpasc.io.atomic import atomic_open, atomic_write
from hpasc.io.runs import find_fold_dirs

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
    """

    name: str
    run: StepFn
    paths: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()
    n_folds: Callable[[dict[str, Any], Path], int] | None = None
    settings: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None


STEP_KINDS: dict[str, StepKind] = {}


def step_kind(
    name: str,
    paths: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    n_folds: Callable[[dict[str, Any], Path], int] | None = None,
    settings: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
) -> Callable[[StepFn], StepFn]:
    """Register a step kind under ``name`` (see :class:`StepKind` for the hooks).

    ``paths`` names the keys holding input paths, ``outputs`` those holding output paths; every
    other key is a value, never a path.
    """

    def deco(fn: StepFn) -> StepFn:
        STEP_KINDS[name] = StepKind(
            name, fn, frozenset(paths) | frozenset(outputs), frozenset(outputs), n_folds, settings
        )
        return fn

    return deco


def _take(
    p: dict[str, Any], ctx: TaskContext, required: tuple[str, ...], optional: dict[str, Any]
) -> dict[str, Any]:
    """Check a step's keys: all ``required`` present, nothing unknown; fill defaults."""
    allowed = set(required) | set(optional)
    for key in p:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"step '{ctx.step}': unknown key '{key}'{hint} (keys: {', '.join(sorted(allowed))})"
            )
    missing = [k for k in required if k not in p]
    if missing:
        raise ConfigError(f"step '{ctx.step}': missing key(s) {missing}")
    return {**optional, **p}


def _labels(paths: str | list[str]):
    """One label table from one or several files (Kaggle train + public HPA, concatenated)."""
    from hpasc.classes import read_labels

    paths = [paths] if isinstance(paths, str) else list(paths)
    table = read_labels(paths[0])
    for extra in paths[1:]:
        table = table.concat(read_labels(extra))
    return table


@step_kind("folds", paths=("labels",))
def folds_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """labels: table or list of tables (each split separately, as the reference); n_folds; seed -> ${out}/folds.csv"""
    import pandas as pd

    from hpasc.classes import read_labels
    from hpasc.data.folds import make_folds, write_folds

    p = _take(p, ctx, ("labels",), {"n_folds": 5, "seed": 0})
    paths = [p["labels"]] if isinstance(p["labels"], str) else p["labels"]
    frames = [make_folds(read_labels(path), int(p["n_folds"]), int(p["seed"])) for path in paths]
    write_folds(pd.concat(frames, ignore_index=True), Path(ctx.out) / "folds.csv")


@step_kind("group")
def group_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """No keys, no work: a name for the steps in its ``needs`` (``hpasc run --until NAME``)."""
    _take(p, ctx, (), {})


@step_kind("synth")
def synth_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """n_images, size, seed, bit_depth -> ${out}/{images,masks,train.csv,solution.csv}"""
    from hpasc.synth import synthesize

    p = _take(p, ctx, ("n_images", "size"), {"seed": 0, "bit_depth": 8})
    synthesize(
        ctx.out,
        int(p["n_images"]),
        int(p["size"]),
        int(p["seed"]),
        int(p["bit_depth"]),
        overwrite=True,
    )


@step_kind("resize", paths=("input",), outputs=("out",))
def resize_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """input, size, masks (bool), interpolation, dtype, eight_bit, workers, out (default ${out})"""
    from hpasc.prepare import resize_set

    p = _take(
        p,
        ctx,
        ("input", "size"),
        {
            "out": str(ctx.out),
            "masks": False,
            "interpolation": "auto",
            "dtype": None,
            "eight_bit": "ceil257",
            "workers": 1,
        },
    )
    resize_set(
        p["input"],
        p["out"],
        int(p["size"]),
        masks=bool(p["masks"]),
        interpolation=p["interpolation"],
        dtype=p["dtype"],
        eight_bit=p["eight_bit"],
        workers=int(p["workers"]),
        overwrite=not ctx.resume,
    )


@step_kind("crop", paths=("images", "masks", "orig_masks"), outputs=("out",))
def crop_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """images, masks, size, orig_masks, workers, out (default ${out})"""
    from hpasc.prepare import crop_set

    p = _take(
        p,
        ctx,
        ("images", "masks"),
        {"out": str(ctx.out), "size": 192, "orig_masks": None, "workers": 1},
    )
    crop_set(
        p["images"],
        p["masks"],
        p["out"],
        int(p["size"]),
        orig_masks=p["orig_masks"],
        workers=int(p["workers"]),
        overwrite=not ctx.resume,
    )


@step_kind(
    "segment",
    paths=("images", "options.nuclei_model", "options.cell_model"),
    outputs=("out", "nuclei_out"),
)
def segment_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """images, method (classical|hpa-unet|cellpose), preset (hpa-unet: hpacellseg|pfcell-2021|fast),
    eight_bit (ceil257|opencv), nuclei_out, workers, batch_size, options, out"""
    from hpasc.segment.sets import segment_set

    p = _take(
        p,
        ctx,
        ("images",),
        {
            "out": str(ctx.out),
            "method": "classical",
            "preset": None,
            "eight_bit": "ceil257",
            "nuclei_out": None,
            "workers": 1,
            "batch_size": 4,
            "options": {},
        },
    )
    segment_set(
        p["images"],
        p["out"],
        method=p["method"],
        nuclei_out=p["nuclei_out"],
        workers=int(p["workers"]),
        batch_size=int(p["batch_size"]),
        overwrite=not ctx.resume,
        options=_segment_options(p, ctx),
        eight_bit=p["eight_bit"],
    )


def _segment_options(p: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    options = dict(p["options"] or {})
    if p["preset"] is not None:
        if p["method"] != "hpa-unet":
            raise ConfigError(f"step '{ctx.step}': preset is an option of method hpa-unet only")
        options["preset"] = p["preset"]
    return options


def _locate_config(name: str, recipe_dir: Path) -> tuple[Path | None, list[Path]]:
    """A config given by path, relative to the recipe's folder, or inside hpasc's shipped configs."""
    from hpasc.config import config_search_path

    candidates = [Path(name), recipe_dir / name, *(d / name for d in config_search_path())]
    return next((c for c in candidates if c.is_file()), None), candidates


def find_config(name: str, ctx: TaskContext) -> Path:
    found, candidates = _locate_config(name, ctx.recipe_dir)
    if found is None:
        looked = ", ".join(str(c.parent) for c in candidates)
        raise ConfigError(f"step '{ctx.step}': config '{name}' not found (looked in: {looked})")
    return found


def _load(dotted: str):
    import importlib

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
    from hpasc.predict.base import write_predictions
    from hpasc.predict.oof import join_oof

    p = _take(p, ctx, ("runs",), {})
    cells, images = join_oof(_list(p["runs"]))
    write_predictions(cells, images, ctx.out / "cells.parquet", ctx.out / "images.parquet")


@step_kind("average", paths=("tables",))
def average_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """tables: cell tables (files or step folders holding cells.parquet), weights, allow_missing -> ${out}/cells.parquet"""
    from hpasc.cells import average_tables, write_table

    p = _take(p, ctx, ("tables",), {"weights": None, "allow_missing": False})
    paths = [_in_folder(t, "cells.parquet") for t in _list(p["tables"])]
    write_table(
        average_tables(paths, weights=p["weights"], allow_missing=bool(p["allow_missing"])),
        ctx.out / "cells.parquet",
    )
    images = [q.with_name("images.parquet") for q in paths]
    if all(q.is_file() for q in images):  # image-level tables average the same way (keys: image_id)
        _average_image_tables(images, p["weights"], ctx.out / "images.parquet")


def _average_image_tables(paths: list[Path], weights, out: Path) -> None:
    import numpy as np
    import pandas as pd

    from hpasc.cells import PROB_COLUMNS

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


@step_kind("predict-image-level", paths=("runs", "images", "masks"))
def predict_image_level_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """runs, images, masks, tta, upsample, precision, batch_size (None: the runs' predict.*) -> ${out}/cells.parquet + images.parquet (mean of the folds)"""
    from hpasc.predict.base import PredictOptions, write_predictions
    from hpasc.predict.image_level import predict_fields

    p = _take(
        p,
        ctx,
        ("runs", "images", "masks"),
        {"tta": None, "upsample": None, "precision": None, "batch_size": None},
    )
    options = PredictOptions(
        tta=p["tta"], upsample=p["upsample"], precision=p["precision"], batch_size=p["batch_size"]
    )
    cells, images = predict_fields(
        find_fold_dirs(_list(p["runs"])), p["images"], p["masks"], options
    )
    write_predictions(cells, images, ctx.out / "cells.parquet", ctx.out / "images.parquet")


@step_kind("predict-cell-level", paths=("runs", "crops"))
def predict_cell_level_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """runs, crops, tta, precision, batch_size (None: the runs' predict.*) -> ${out}/cells.parquet (+ images.parquet; mean of the folds)"""
    from hpasc.predict.base import PredictOptions, write_predictions
    from hpasc.predict.cell_level import predict_cell_fields

    p = _take(p, ctx, ("runs", "crops"), {"tta": None, "precision": None, "batch_size": None})
    options = PredictOptions(tta=p["tta"], precision=p["precision"], batch_size=p["batch_size"])
    cells, images = predict_cell_fields(find_fold_dirs(_list(p["runs"])), p["crops"], options)
    write_predictions(cells, images, ctx.out / "cells.parquet", ctx.out / "images.parquet")


@step_kind("submit", paths=("masks", "predictions"))
def submit_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """masks (original size), predictions (tables or step folders), weights, edge/center thresholds -> ${out}/submission.csv"""
    from hpasc.submission import write_submission

    p = _take(
        p,
        ctx,
        ("masks", "predictions"),
        {
            "weights": None,
            "edge_area_threshold": 80000,
            "center_area_threshold": 32000,
            "scale_thresholds_with_size": False,
            "min_confidence": 0.0,
            "allow_missing": False,
        },
    )
    tables = [_in_folder(t, "cells.parquet") for t in _list(p["predictions"])]
    summary = write_submission(
        p["masks"],
        tables,
        ctx.out / "submission.csv",
        weights=p["weights"],
        allow_missing=bool(p["allow_missing"]),
        edge_area_threshold=float(p["edge_area_threshold"]),
        center_area_threshold=float(p["center_area_threshold"]),
        scale_thresholds_with_size=bool(p["scale_thresholds_with_size"]),
        min_confidence=float(p["min_confidence"]),
    )
    log.info("submission: %s", summary)


@step_kind("evaluate", paths=("solution", "submission", "baseline"))
def evaluate_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """solution, submission (file or step folder), baseline (optional submission) -> ${out}/metric.json"""
    import json

    from hpasc.metric import evaluate

    p = _take(p, ctx, ("solution", "submission"), {"baseline": None, "baseline_name": "baseline"})

    result = evaluate(p["solution"], _in_folder(p["submission"], "submission.csv"))
    doc: dict[str, Any] = {
        "mAP": result.map,
        "per_class": {str(k): v for k, v in result.per_class.items()},
        "n_gt": {str(k): v for k, v in result.n_gt.items()},
    }
    if p["baseline"]:
        base = evaluate(p["solution"], _in_folder(p["baseline"], "submission.csv"))
        doc["baseline"] = {
            "name": p["baseline_name"],
            "mAP": base.map,
            "per_class": {str(k): v for k, v in base.per_class.items()},
        }
    atomic_write(ctx.out / "metric.json", json.dumps(doc, indent=1))


@step_kind("broadcast", paths=("cells", "images"))
def broadcast_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """cells (table or step folder: which cells), images (image-level table or step folder) -> ${out}/cells.parquet

    Every cell gets its field's image-level probabilities: the baseline that ignores cells.
    """
    import pandas as pd

    from hpasc.cells import broadcast_image_table, read_table, write_table

    p = _take(p, ctx, ("cells", "images"), {})
    cells = read_table(_in_folder(p["cells"], "cells.parquet"))
    images = pd.read_parquet(_in_folder(p["images"], "images.parquet"))
    write_table(broadcast_image_table(cells, images), ctx.out / "cells.parquet")


@step_kind("report", paths=("images", "masks", "cells", "image_level", "metric", "runs"))
def report_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """images, masks, cells (step folder or table), image_level, metric (step folder), runs, title -> ${out}/report.html"""
    import json
    import shutil

    from hpasc.report import MANIFEST, build_report

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
