"""`hpasc run`: execute a recipe (a whole multi-stage run) in dependency order, resumably."""

from __future__ import annotations

from pathlib import Path

import typer

from hpasc.pipeline.engine import SlurmOptions, execute
from hpasc.pipeline.recipe import forced_steps, format_plan, load_recipe, plan, run_recipe


def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML (e.g. configs/recipes/pfcell-2021.yaml)."),
    data: Path = typer.Option(
        None, "--data", help="Data folder that ${data} in the recipe points to."
    ),
    work: Path = typer.Option(
        None,
        "--work",
        help="Work folder for all outputs (default: the recipe's 'work', else ./work).",
    ),
    until: str = typer.Option(
        None, "--until", help="Run this step and what it needs, nothing after."
    ),
    only: list[str] = typer.Option(
        None, "--only", help="Run only this step (repeatable); its inputs must exist."
    ),
    force: list[str] = typer.Option(
        None,
        "--force",
        help="Re-run this step and every step that depends on it, even if finished (repeatable).",
    ),
    fold: int = typer.Option(
        None, "--fold", min=0, help="Only this fold of fold-wise steps (cluster arrays)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (order, done/to-run) and exit."
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="local: independent tasks in parallel on this machine; slurm: every task an sbatch "
        "job with its dependencies; inline: one after another in this process (a DDP rank).",
    ),
    cores: int = typer.Option(
        None, "--cores", min=1, help="local: CPU cores the tasks share (default: all)."
    ),
    gpus: int = typer.Option(
        None, "--gpus", min=0, help="local: GPUs the tasks share (default: all visible)."
    ),
    detach: bool = typer.Option(
        False, "--detach", help="slurm: submit the jobs, print their ids and return."
    ),
    slurm_partition: str = typer.Option(None, "--slurm-partition", help="slurm: partition."),
    slurm_account: str = typer.Option(None, "--slurm-account", help="slurm: account."),
    slurm_option: list[str] = typer.Option(
        None,
        "--slurm-option",
        help="slurm: any other sbatch option of every job, KEY=VALUE or KEY (repeatable), "
        "e.g. qos=high, constraint=a100.",
    ),
) -> None:
    """Run a recipe: steps in dependency order, finished work skipped, failures name the step and log."""

    r = load_recipe(recipe, data=data, work=work)
    if force:
        named = list(dict.fromkeys(force))
        after = [n for n in forced_steps(r, named) if n not in named]
        typer.echo(
            f"forced: {', '.join(named)}"
            + (f", and what depends on it: {', '.join(after)}" if after else "")
        )
    if dry_run:
        items = plan(r, until=until, only=only or None, force=force or None, fold=fold)
        typer.echo(f"recipe '{r.name}': {len(items)} tasks (data: {r.data}, work: {r.work})")
        typer.echo(format_plan(items))
        return
    select = {"until": until, "only": only or None, "force": force or None, "fold": fold}
    if executor == "inline":
        items = run_recipe(r, **select, echo=typer.echo)
        ran = sum(1 for it in items if it.status != "done")
    else:
        slurm = SlurmOptions(
            slurm_partition, slurm_account, _sbatch_options(slurm_option or []), detach
        )
        nodes = execute(r, executor, **select, cores=cores, gpus=gpus, slurm=slurm, echo=typer.echo)
        if detach:
            return
        items = plan(r, **select)
        ran = len(nodes)
    typer.echo(
        f"recipe '{r.name}': {ran} tasks run, {len(items) - ran} already done; outputs in {r.work}"
    )


def _sbatch_options(pairs: list[str]) -> dict[str, object]:
    """``--slurm-option qos=high --slurm-option exclusive`` -> ``{"qos": "high", "exclusive": True}``."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        out[key.strip().lstrip("-")] = value if eq else True
    return out


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        epilog=(
            "Examples:  hpasc run configs/recipes/pfcell-2021.yaml --data /data/hpa --dry-run  |  "
            "... --until prepared  |  ... --only cam-b2-768 --fold 3  |  ... --force ensemble.  "
            "Recipe format and step kinds: docs/recipes.md."
        ),
    )(run)
