"""The built-in step kinds of recipes (see :mod:`hpasc.recipe`): each calls one library function.

Parameters are the step's YAML keys (after ``${...}`` substitution). A kind takes only the keys it
documents; an unknown key is an error naming the closest valid ones.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from hpasc.errors import ConfigError
from hpasc.recipe import TaskContext, step_kind


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


@step_kind("folds")
def folds_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """labels: table or list of tables (each split separately, as the reference); n_folds; seed -> ${out}/folds.csv"""
    import pandas as pd

    from hpasc.classes import read_labels
    from hpasc.data.folds import make_folds, write_folds

    p = _take(p, ctx, ("labels",), {"n_folds": 5, "seed": 0})
    paths = [p["labels"]] if isinstance(p["labels"], str) else p["labels"]
    frames = [make_folds(read_labels(path), int(p["n_folds"]), int(p["seed"])) for path in paths]
    write_folds(pd.concat(frames, ignore_index=True), Path(ctx.out) / "folds.csv")


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


@step_kind("resize")
def resize_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """input, size, masks (bool), interpolation, dtype, workers, out (default ${out})"""
    from hpasc.prepare import resize_set

    p = _take(
        p,
        ctx,
        ("input", "size"),
        {"out": str(ctx.out), "masks": False, "interpolation": "auto", "dtype": None, "workers": 1},
    )
    resize_set(
        p["input"],
        p["out"],
        int(p["size"]),
        masks=bool(p["masks"]),
        interpolation=p["interpolation"],
        dtype=p["dtype"],
        workers=int(p["workers"]),
        overwrite=not ctx.resume,
    )


@step_kind("crop")
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


@step_kind("segment")
def segment_step(p: dict[str, Any], ctx: TaskContext) -> None:
    """images, method (classical|hpa-unet|cellpose), nuclei_out, workers, batch_size, options, out"""
    from hpasc.segment.sets import segment_set

    p = _take(
        p,
        ctx,
        ("images",),
        {
            "out": str(ctx.out),
            "method": "classical",
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
        options=dict(p["options"] or {}),
    )
