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

import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpasc.errors import ConfigError, HpascError
from hpasc.io.atomic import atomic_open
from hpasc.pipeline.graph import (
    Board,
    Node,
    block_dependents,
    failure_report,
    status_file,
    task_graph,
)
from hpasc.pipeline.recipe import Recipe, find_task, run_task
from hpasc.pipeline.slurm import SlurmOptions, submit, watch

# re-exported: what callers of the engine use
__all__ = [
    "EXECUTORS",
    "Board",
    "Node",
    "SlurmOptions",
    "execute",
    "run_one",
    "status_file",
    "task_graph",
]

EXECUTORS = ("local", "slurm")


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
            try:  # Lightning finishes its batch on SIGTERM; a task that hangs is killed
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
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
        options = slurm or SlurmOptions()
        with Board(recipe, nodes, executor, echo) as board:
            jobs = submit(recipe, nodes, options, board, run_one)
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
