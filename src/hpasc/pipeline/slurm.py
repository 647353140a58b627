"""The SLURM executor: the whole task graph submitted at once through submitit.

Each task becomes one ``sbatch`` job (submitit writes the script and pickles the call
:func:`hpasc.pipeline.engine.run_one`) with ``--dependency=afterok:<the job ids of its needs>``
and ``--kill-on-invalid-dep=yes``, so SLURM orders and schedules the jobs, ``squeue`` shows the
graph, and the jobs after a failed one are cancelled. Resources map to ``--gpus-per-node``,
``--cpus-per-task``, ``--mem``, ``--time``, ``--nodes`` and, for a task on several GPUs,
``--ntasks-per-node`` = GPUs per node (one process per GPU: Lightning reads its rank from SLURM).
Job scripts and their output go to ``WORK/.hpasc-run/slurm/``; ``WORK`` must be on a file
system every node sees.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpasc.errors import ConfigError, HpascError

if TYPE_CHECKING:
    from hpasc.pipeline.graph import Board, Node
    from hpasc.pipeline.recipe import Recipe

__all__ = ["SlurmOptions", "job_parameters", "submit", "watch"]


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


_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT")
_WAITING = ("PENDING", "REQUEUED", "RESIZING", "UNKNOWN", "READY", "PREEMPTED")


def job_parameters(node: Node, options: SlurmOptions, deps: list[str]) -> dict[str, Any]:
    """The submitit ``SlurmExecutor`` parameters of one task's job."""
    r = node.resources
    params: dict[str, Any] = {
        "job_name": f"hpasc-{node.label}",
        "time": int(r.time_min),
        "nodes": r.nodes,
        "ntasks_per_node": r.processes_per_node,
        "cpus_per_task": r.cpus,
        "additional_parameters": {"kill-on-invalid-dep": "yes", **options.options},
    }
    if r.gpus:
        params["gpus_per_node"] = r.gpus
    if r.mem_gb:
        params["mem"] = f"{int(r.mem_gb * 1024)}M"
    if options.partition:
        params["partition"] = options.partition
    if options.account:
        params["account"] = options.account
    if deps:
        params["dependency"] = "afterok:" + ":".join(deps)
    return params


def submit(
    recipe: Recipe,
    nodes: list[Node],
    options: SlurmOptions,
    board: Board,
    run: Callable[..., Any],
) -> dict[str, Any]:
    """Submit every task, in recipe order (so a job's needs have ids before it), recording
    each job id on its node; each job calls ``run(recipe, label, forced)``. Returns the
    submitit jobs by task label."""
    import submitit  # only this executor needs it: local task processes do not import it

    folder = recipe.work / ".hpasc-run" / "slurm" / "%j"
    by_label = {n.label: n for n in nodes}
    jobs = {}
    for node in nodes:
        try:
            executor = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as exc:  # no srun on PATH
            raise HpascError(
                f"--executor slurm: {exc} (run on a SLURM login node, or use --executor local)"
            ) from exc
        deps = [by_label[d].job_id for d in node.deps]
        try:
            executor.update_parameters(**job_parameters(node, options, deps))
            # the loaded recipe travels in the job's pickle: no job reads the YAML again
            job = executor.submit(run, recipe, node.label, node.item.status == "forced")
        except ValueError as exc:
            raise ConfigError(f"--slurm-option: {str(exc).splitlines()[0]}") from exc
        except submitit.core.utils.FailedJobError as exc:
            raise HpascError(f"sbatch refused the job of '{node.label}': {exc}") from exc
        node.job_id = job.job_id
        jobs[node.label] = job
        board.write()
    return jobs


def watch(nodes: list[Node], jobs: dict[str, Any], poll_s: float, board: Board) -> None:
    """Follow the jobs (one ``sacct`` call per ``poll_s`` for all of them) until every one has
    ended; a job cancelled after a failed need is ``blocked``."""
    watcher = next(iter(jobs.values())).watcher
    by_label = {n.label: n for n in nodes}
    while True:
        watcher.update()
        for node in nodes:
            if node.state in ("done", "failed", "blocked"):
                continue
            state = watcher.get_state(node.job_id, mode="cache").split()[0].upper()
            if state in _RUNNING and node.state != "running":
                board.changed(node, "running")
            elif state == "COMPLETED":
                board.changed(node, "done")
            elif state not in _RUNNING + _WAITING:
                failed = [by_label[d] for d in node.deps if by_label[d].state != "done"]
                if state == "CANCELLED" and failed and failed[0].state in ("failed", "blocked"):
                    root = failed[0].label if failed[0].state == "failed" else failed[0].error
                    board.changed(node, "blocked", root)
                else:
                    output = jobs[node.label].paths.stderr
                    board.changed(
                        node,
                        "failed",
                        f"step '{node.label}' ({node.item.task.step.kind}) failed: SLURM job "
                        f"{node.job_id} ended {state} (log: {node.log}; job output: {output})",
                    )
        if all(n.state in ("done", "failed", "blocked") for n in nodes):
            return
        time.sleep(poll_s)
