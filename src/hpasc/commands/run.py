"""`hpasc run`: execute a recipe (a whole multi-stage run) in dependency order, resumably."""

from __future__ import annotations

from pathlib import Path

import typer


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
) -> None:
    """Run a recipe: steps in dependency order, finished work skipped, failures name the step and log."""
    from hpasc.pipeline.recipe import forced_steps, format_plan, load_recipe, plan, run_recipe

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
    items = run_recipe(
        r, until=until, only=only or None, force=force or None, fold=fold, echo=typer.echo
    )
    ran = sum(1 for it in items if it.status != "done")
    typer.echo(
        f"recipe '{r.name}': {ran} tasks run, {len(items) - ran} already done; outputs in {r.work}"
    )


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        epilog=(
            "Examples:  hpasc run configs/recipes/pfcell-2021.yaml --data /data/hpa --dry-run  |  "
            "... --until prepared  |  ... --only cam-b2-768 --fold 3  |  ... --force ensemble.  "
            "Recipe format and step kinds: docs/recipes.md."
        ),
    )(run)
