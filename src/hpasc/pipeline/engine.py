"""Run a recipe's task graph in parallel: on this machine, or as SLURM jobs (submitit).

:func:`execute` plans the selected tasks (:func:`hpasc.pipeline.recipe.plan`), turns them into a
graph of :class:`Node` s (a task, the tasks it waits for, its
:class:`~hpasc.pipeline.resources.Resources`) and hands it to an executor:

* ``local``: tasks whose needs are finished start as processes of their own while they fit in
  ``cores`` / ``gpus`` (each gets its GPU ids in ``CUDA_VISIBLE_DEVICES``);
* ``slurm``: every task is submitted at once as an ``sbatch`` job with
  ``--dependency=afterok:<its needs>`` and its resources (:mod:`hpasc.pipeline.slurm`).

Either way each task runs through :func:`run_one`, i.e. :func:`hpasc.pipeline.recipe.run_task`,
so done markers, fingerprints and resume mean what they mean in a sequential run. A task that
is already finished is left out; one downstream of a task that runs is started anyway and skips
itself if its fingerprint turns out unchanged. The state of every task is written to
``WORK/.hpasc-run/status.json`` and, on a terminal, drawn as a live table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpasc.errors import ConfigError, HpascError
from hpasc.io.atomic import atomic_open, atomic_write
from hpasc.pipeline.recipe import (
    PlanItem,
    Recipe,
    StepFailed,
    find_task,
    plan,
    run_task,
    task_log,
)
from hpasc.pipeline.resources import Resources

__all__ = ["EXECUTORS", "Node", "execute", "run_one", "status_file", "task_graph"]

EXECUTORS = ("local", "slurm")
STATES = ("pending", "running", "done", "failed", "blocked")


@dataclasses.dataclass
class Node:
    """One task of the graph an executor runs."""

    item: PlanItem
    deps: list[str]  # labels of the tasks it waits for (those of its needs that run)
    resources: Resources
    log: Path
    state: str = "pending"  # one of STATES; "blocked": a task it needs failed
    started: float | None = None
    finished: float | None = None
    job_id: str | None = None
    error: str | None = None  # failed: the error; blocked: the label of the failed task

    @property
    def label(self) -> str:
        return self.item.task.label

    def as_json(self) -> dict[str, Any]:
        seconds = None
        if self.started is not None:
            seconds = round((self.finished or time.time()) - self.started, 1)
        return {
            "task": self.label,
            "kind": self.item.task.step.kind,
            "state": self.state,
            "needs": self.deps,
            "resources": dataclasses.asdict(self.resources),
            "started": self.started,
            "finished": self.finished,
            "seconds": seconds,
            "log": str(self.log),
            "job_id": self.job_id,
            "error": self.error,
        }


def task_graph(
    recipe: Recipe,
    until: str | None = None,
    only: list[str] | None = None,
    force: list[str] | None = None,
    fold: int | None = None,
) -> list[Node]:
    """The selected tasks (as :func:`~hpasc.pipeline.recipe.plan` selects them) that must run,
    in recipe order, each with the labels of the running tasks it waits for.

    A task runs if it is not finished, or if a task it needs runs (whose new done marker may
    change its fingerprint); finished tasks are left out and wait for nothing.
    """
    items = plan(recipe, until=until, only=only, force=force, fold=fold)
    by_step: dict[str, list[str]] = {}
    nodes: list[Node] = []
    for item in items:
        step = item.task.step
        deps = [label for need in step.needs for label in by_step.get(need, [])]
        if item.status != "done" or deps:
            nodes.append(Node(item, deps, step.needs_resources, task_log(recipe, item.task)))
            by_step.setdefault(step.name, []).append(item.task.label)
    return nodes


def status_file(recipe: Recipe) -> Path:
    """Where :func:`execute` keeps the machine-readable state of a run."""
    return recipe.work / ".hpasc-run" / "status.json"


class Board:
    """The state of a run, written to :func:`status_file` on every change and, on a terminal,
    drawn as a live table (else each change is one line through ``echo``)."""

    def __init__(
        self, recipe: Recipe, nodes: list[Node], executor: str, echo: Callable[[str], None]
    ):
        from rich.console import Console

        from hpasc.progress import CONSOLE_KWARGS

        self.recipe, self.nodes, self.executor, self.echo = recipe, nodes, executor, echo
        self.path = status_file(recipe)
        self.started = time.time()
        console = Console(**CONSOLE_KWARGS)
        self._live = None
        if console.is_terminal:
            from rich.live import Live

            self._live = Live(console=console, refresh_per_second=2, get_renderable=self._table)

    def __enter__(self) -> Board:
        self.write()
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
        self.write()

    def counts(self) -> dict[str, int]:
        return {s: sum(n.state == s for n in self.nodes) for s in STATES}

    def write(self) -> None:
        doc = {
            "recipe": self.recipe.name,
            "recipe_path": str(self.recipe.path),
            "work": str(self.recipe.work),
            "executor": self.executor,
            "started": self.started,
            "updated": time.time(),
            "counts": self.counts(),
            "tasks": [n.as_json() for n in self.nodes],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(doc, indent=1))

    def changed(self, node: Node, state: str, error: str | None = None) -> None:
        """Record ``node``'s new state (and its time stamps); tell the user."""
        node.state, node.error = state, error
        now = time.time()
        if state == "running":
            node.started = node.started or now
        elif state in ("done", "failed"):
            node.started = node.started or now
            node.finished = now
        self.write()
        if self._live is None:
            i = self.nodes.index(node) + 1
            where = f" (job {node.job_id})" if node.job_id and state == "running" else ""
            what = {
                "running": f"started{where}, log: {node.log}",
                "done": f"finished in {node.finished - node.started:.1f} s"
                if node.started and node.finished
                else "done",
                "failed": f"FAILED (log: {node.log})",
                "blocked": f"not run: it needs '{error}', which failed",
                "pending": "pending",
            }[state]
            self.echo(f"[{i}/{len(self.nodes)}] {node.label}: {what}")

    def _table(self):
        from rich.table import Table

        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items() if v)
        table = Table(
            title=f"hpasc run {self.recipe.name} ({self.executor}): {counts}",
            caption=f"status: {self.path}",
        )
        for col in ("task", "state", "time", "log"):
            table.add_column(col, overflow="fold" if col == "log" else "ellipsis")
        # the live rows first when the table is longer than the terminal
        room = max(8, (self._live.console.height if self._live else 40) - 8)
        shown = self.nodes
        if len(shown) > room:
            order = {"running": 0, "failed": 1, "blocked": 2, "pending": 3, "done": 4}
            shown = sorted(self.nodes, key=lambda n: order[n.state])[:room]
        colour = {"running": "cyan", "done": "green", "failed": "red", "blocked": "yellow"}
        for n in shown:
            seconds = n.as_json()["seconds"]
            state = f"[{colour[n.state]}]{n.state}[/]" if n.state in colour else n.state
            table.add_row(n.label, state, "" if seconds is None else f"{seconds:.0f} s", str(n.log))
        if len(shown) < len(self.nodes):
            table.add_row(f"... {len(self.nodes) - len(shown)} more", "", "", "")
        return table


def run_one(recipe: Recipe | str, task: str, forced: bool) -> str:
    """Run one task in this process: what every local worker process and SLURM job does.

    ``recipe``: the loaded recipe, or the file :func:`save_recipe` wrote (loading the recipe
    again would read every training config, seconds per task); ``task``: its label.
    Returns the task's status, ``run`` or ``done`` (it was finished already).
    """
    if not isinstance(recipe, Recipe):
        with open(recipe, "rb") as fh:
            recipe = pickle.load(fh)
    return run_task(recipe, find_task(recipe, task), forced).status


def save_recipe(recipe: Recipe) -> Path:
    """Write the loaded recipe where the local executor's processes read it."""
    path = recipe.work / ".hpasc-run" / "recipe.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        pickle.dump(recipe, fh)
    return path


def block_dependents(nodes: list[Node], board: Board) -> None:
    """Mark every pending task downstream of a failed one ``blocked``, naming the cause."""
    by_label = {n.label: n for n in nodes}
    for node in nodes:  # recipe order: a task's needs come before it
        if node.state != "pending":
            continue
        bad = [by_label[d] for d in node.deps if by_label[d].state in ("failed", "blocked")]
        if bad:
            root = bad[0].label if bad[0].state == "failed" else bad[0].error
            board.changed(node, "blocked", root)


def failure_report(nodes: list[Node]) -> StepFailed | None:
    """One error naming each failed task, its log, and the tasks that could not run."""
    failed = [n for n in nodes if n.state == "failed"]
    if not failed:
        return None
    parts = []
    for n in failed:
        error = n.error or "failed"
        if not error.startswith(f"step '{n.label}'"):  # run_task's own message names it all
            error = f"step '{n.label}' ({n.item.task.step.kind}) failed: {error} (log: {n.log})"
        blocked = [b.label for b in nodes if b.state == "blocked" and b.error == n.label]
        parts.append(error + (f"; not run because of it: {', '.join(blocked)}" if blocked else ""))
    return StepFailed("; ".join(parts))


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "the task's process ended with an error"
    found = [line[7:] for line in lines if line.startswith("error: ")]
    return (
        found[-1] if found else (lines[-1] if lines else "the task's process ended with an error")
    )


def run_local(recipe: Recipe, nodes: list[Node], cores: int, gpus: list[str], board: Board) -> None:
    """Start each task whose needs are done as a process while it fits in ``cores`` and
    ``gpus``; a task asking for more than there is gets all of it."""
    saved = save_recipe(recipe)
    free_cpus, free_gpus = cores, list(gpus)
    running: dict[str, tuple[Node, subprocess.Popen, int, list[str]]] = {}
    by_label = {n.label: n for n in nodes}
    try:
        while True:
            block_dependents(nodes, board)
            for node in nodes:
                if node.state != "pending" or any(by_label[d].state != "done" for d in node.deps):
                    continue
                want = node.resources
                cpus = min(want.cpus, cores)
                n_gpus = min(want.gpus * want.nodes, len(gpus))
                if cpus > free_cpus or n_gpus > len(free_gpus):
                    continue
                mine, free_gpus = free_gpus[:n_gpus], free_gpus[n_gpus:]
                free_cpus -= cpus
                running[node.label] = (node, _start(saved, node, cpus, mine), cpus, mine)
                board.changed(node, "running")
            if not running:
                break
            time.sleep(0.2)
            for label, (node, proc, cpus, mine) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[label]
                free_cpus += cpus
                free_gpus += mine
                if proc.returncode == 0:
                    board.changed(node, "done")
                else:
                    board.changed(node, "failed", _last_error(node.log))
    except BaseException:  # Ctrl-C (or a bug here): no orphan task keeps running
        for _, proc, _, _ in running.values():
            proc.terminate()
        for _, proc, _, _ in running.values():
            proc.wait()
        raise


def _start(saved: Path, node: Node, cpus: int, gpus: list[str]) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus))
    # one thread per granted core, unless the user chose (parallel tasks must not oversubscribe)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, str(cpus))
    node.log.parent.mkdir(parents=True, exist_ok=True)
    with node.log.open("a") as out:  # the task's own log: its output and the tracebacks
        return subprocess.Popen(
            [sys.executable, "-m", "hpasc.pipeline.engine", str(saved), node.label]
            + (["--forced"] if node.item.status == "forced" else []),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@dataclasses.dataclass
class SlurmOptions:
    """What the SLURM executor adds to every job: ``partition``, ``account`` and any other
    ``sbatch`` option (``options``: name without dashes -> value; ``True`` for a flag)."""

    partition: str | None = None
    account: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    detach: bool = False
    # seconds between two sacct calls while watching (HPASC_SLURM_POLL_S: tests poll faster)
    poll_s: float = dataclasses.field(
        default_factory=lambda: float(os.environ.get("HPASC_SLURM_POLL_S", "30"))
    )


def execute(
    recipe: Recipe,
    executor: str = "local",
    until: str | None = None,
    only: list[str] | None = None,
    force: list[str] | None = None,
    fold: int | None = None,
    cores: int | None = None,
    gpus: int | None = None,
    slurm: SlurmOptions | None = None,
    echo: Callable[[str], None] = print,
) -> list[Node]:
    """Run the selected tasks of ``recipe`` with ``executor`` (``local`` or ``slurm``).

    Parameters
    ----------
    cores, gpus : local budgets (default: every core; every visible GPU).
    slurm : SLURM options; with ``detach`` the jobs are submitted and the call returns.

    Returns
    -------
    The tasks that ran (finished ones are left out), with their final states.

    Raises
    ------
    StepFailed
        When a task failed: each failed task, its error and log, and the tasks not run because
        of it. Independent tasks still ran.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor}: unknown (executors: {', '.join(EXECUTORS)})")
    if executor == "local" and slurm is not None and slurm.detach:
        raise ConfigError("--detach needs --executor slurm (a local run lives in this process)")
    nodes = task_graph(recipe, until, only, force, fold)
    if not nodes:
        echo(f"recipe '{recipe.name}': every selected task is finished")
        return nodes
    if executor == "local":
        budget = cores or os.cpu_count() or 1
        ids = visible_gpus()
        if gpus is not None:
            if gpus > len(ids):
                raise ConfigError(
                    f"--gpus {gpus}: only {len(ids)} GPU(s) visible ({','.join(ids) or 'none'})"
                )
            ids = ids[:gpus]
        echo(
            f"recipe '{recipe.name}': {len(nodes)} tasks on this machine "
            f"({budget} cores, {len(ids)} GPUs); status: {status_file(recipe)}"
        )
        with Board(recipe, nodes, executor, echo) as board:
            run_local(recipe, nodes, budget, ids, board)
    else:
        from hpasc.pipeline.slurm import submit, watch

        options = slurm or SlurmOptions()
        with Board(recipe, nodes, executor, echo) as board:
            jobs = submit(recipe, nodes, options, board)
            if options.detach:
                for n in nodes:
                    echo(f"  {n.job_id:>10}  {n.label}")
                echo(
                    f"{len(nodes)} jobs submitted (squeue --me shows them); "
                    f"outputs in {recipe.work}"
                )
                return nodes
            watch(nodes, jobs, options.poll_s, board)
    error = failure_report(nodes)
    if error is not None:
        raise error
    return nodes


def main(argv: list[str] | None = None) -> int:
    """``python -m hpasc.pipeline.engine RECIPE_PICKLE TASK [--forced]``: one task, for the
    local executor."""
    args = sys.argv[1:] if argv is None else argv
    try:
        run_one(args[0], args[1], "--forced" in args[2:])
    except HpascError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
