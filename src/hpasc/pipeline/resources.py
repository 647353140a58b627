"""What one task of a recipe asks of a machine: GPUs, CPU cores, memory, time, nodes.

Each step kind has defaults (:data:`KIND_DEFAULTS`, keyed by kind name: a training takes one GPU,
a CPU stage takes its ``workers`` cores); a recipe overrides them per step with a ``resources:``
mapping::

    - name: cam-b7-768
      kind: train-image-level
      resources: {gpus: 4, nodes: 2, cpus: 8, mem_gb: 64, time_min: 2880}

``gpus`` counts GPUs per node; a task on more than one GPU (or node) runs one process per GPU
(DDP through Lightning's SLURM or torchrun support). The local executor hands out at most what
``--cores`` / ``--gpus`` allow; the SLURM executor turns the numbers into ``sbatch`` options.
Resources are not part of a task's fingerprint: changing them re-runs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from hpasc.errors import ConfigError

__all__ = ["KIND_DEFAULTS", "Resources", "check_resources", "step_resources"]


@dataclasses.dataclass(frozen=True)
class Resources:
    """What a task needs.

    Attributes
    ----------
    gpus : GPUs per node (0: a CPU task).
    cpus : CPU cores per process.
    mem_gb : memory per node in GiB (None: the cluster's default).
    time_min : wall-clock limit in minutes (SLURM ``--time``).
    nodes : nodes (more than 1 only for DDP trainings).
    """

    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    time_min: int = 4 * 60
    nodes: int = 1

    @property
    def processes_per_node(self) -> int:
        """One process per GPU when a task spans GPUs (DDP), else one."""
        return self.gpus if self.gpus > 1 or self.nodes > 1 else 1


_DAY = 24 * 60
_TRAIN = Resources(gpus=1, cpus=4, time_min=_DAY)  # 4 cores: the data loader's workers
_PREDICT = Resources(gpus=1, cpus=4, time_min=4 * 60)

# Defaults per step kind; a kind not listed is a one-core CPU task. ``cpus`` of a kind with a
# ``workers`` key is that key's value (see :func:`step_resources`).
KIND_DEFAULTS: dict[str, Resources] = {
    "train-image-level": _TRAIN,
    "train-cell-level": _TRAIN,
    "predict-image-level": _PREDICT,
    "predict-cell-level": _PREDICT,
    # the HPA U-Net runs on a GPU when there is one; the classical segmenter ignores it
    "segment": Resources(gpus=1, time_min=_DAY),
}

_KEYS = {f.name for f in dataclasses.fields(Resources)}


def check_resources(raw: Any, where: str) -> dict[str, Any]:
    """Validate a step's ``resources:`` mapping (known keys, positive numbers); return it."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: 'resources' must be a mapping such as {{gpus: 1, cpus: 8}}, got {raw!r}"
        )
    for key, value in raw.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), sorted(_KEYS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"{where}: unknown resource '{key}'{hint} (resources: {', '.join(sorted(_KEYS))})"
            )
        lowest = 0 if key == "gpus" else 1
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < lowest or (key != "mem_gb" and value != int(value)):
            kind = "a number" if key == "mem_gb" else "an integer"
            raise ConfigError(
                f"{where}: resource '{key}' must be {kind} >= {lowest}, got {value!r}"
            )
    return dict(raw)


def step_resources(kind: str, params: dict[str, Any], override: dict[str, Any]) -> Resources:
    """A step's resources: its kind's defaults, ``workers`` cores if it has that key, then the
    recipe's ``resources:`` (already checked by :func:`check_resources`)."""
    base = KIND_DEFAULTS.get(kind, Resources())
    workers = params.get("workers")
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > 0:
        base = dataclasses.replace(base, cpus=workers)
    values = {k: (v if k == "mem_gb" else int(v)) for k, v in override.items()}
    return dataclasses.replace(base, **values)
