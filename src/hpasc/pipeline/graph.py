"""The task graph of a run and its state: what an executor runs, and what the user sees.

:func:`task_graph` turns the selected tasks of a recipe into :class:`Node` s (a task, the tasks
it waits for, its :class:`~hpasc.pipeline.resources.Resources`, its log); :class:`Board` keeps
their states in ``WORK/.hpasc-run/status.json`` and draws them as a live table on a terminal.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from hpasc.io.atomic import atomic_write
from hpasc.pipeline.recipe import PlanItem, Recipe, StepFailed, plan, task_log
from hpasc.pipeline.resources import Resources
from hpasc.progress import live_display

__all__ = [
    "STATES",
    "Board",
    "Node",
    "block_dependents",
    "failure_report",
    "status_file",
    "task_graph",
]

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
        self.recipe, self.nodes, self.executor, self.echo = recipe, nodes, executor, echo
        self.path = status_file(recipe)
        self.started = time.time()
        self._live = live_display(self._table)  # None when stderr is no terminal

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

    def _table(self) -> Table:
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
