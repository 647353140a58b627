"""`hpasc demo`: the whole method end to end on synthetic fields, on a CPU, in minutes."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import typer

from hpasc.config import config_search_path
from hpasc.errors import InputError
from hpasc.pipeline.engine import execute
from hpasc.pipeline.recipe import load_recipe, run_recipe


def demo(
    out: Path = typer.Option(
        Path("out/demo"), "--out", "-o", help="Work folder for every output of the demo."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start again from scratch (otherwise finished steps are kept)."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Run the tasks one after another in this process and show the training frameworks' "
        "own messages (else tasks run in parallel, their messages in OUT/logs/).",
    ),
) -> None:
    """Run the demo: synthesise fields, segment, crop, train CAM + cell models, ensemble, submit, score, report."""

    if not verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore")
    recipe = next(
        (
            d / "recipes" / "demo.yaml"
            for d in config_search_path()
            if (d / "recipes/demo.yaml").is_file()
        ),
        None,
    )
    if recipe is None:
        raise InputError(
            "the demo recipe recipes/demo.yaml is missing from hpasc's configs; reinstall hpasc"
        )
    if force and out.exists():
        shutil.rmtree(out)
    start = time.time()
    r = load_recipe(recipe, data=out, work=out)
    typer.echo(
        f"hpasc demo: {len(r.tasks())} tasks, outputs in {out} (re-running skips finished steps)"
    )
    if verbose:
        run_recipe(r, echo=typer.echo)
    else:
        execute(r, "local", echo=typer.echo)  # independent tasks in parallel, on every core
    metric = json.loads((out / "metric" / "metric.json").read_text())
    base = metric.get("baseline", {})
    typer.echo("")
    typer.echo("competition metric on held-out synthetic fields (mAP, IoU >= 0.6):")
    typer.echo(f"  hpasc (CAM + cell model ensemble, per cell) : {metric['mAP']:.4f}")
    if base:
        typer.echo(f"  baseline ({base['name']}) : {base['mAP']:.4f}")
    typer.echo(
        f"report: {out / 'report' / 'report.html'}   submission: {out / 'submission' / 'submission.csv'}"
    )
    typer.echo(f"done in {time.time() - start:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
