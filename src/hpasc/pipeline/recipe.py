"""Multi-stage runs: a YAML recipe lists steps; :func:`run_recipe` executes them in dependency order.

A recipe::

    name: demo
    steps:
      - name: masks
        kind: segment
        images: ${data}/images          # ${data}: the --data folder; ${work}: the work folder
        out: ${out}                      # ${out}: this step's own output folder (work/<name>)
      - name: cam
        kind: train-image-level
        config: image-level/tiny.yaml    # relative to the recipe's folder, then to configs/
        masks: ${step:masks}             # the output folder of step 'masks' (adds a dependency)
        folds: all                       # fan out: one task per fold

Each task (a step, or one fold of it) records a fingerprint of its kind, resolved parameters and
the fingerprints of what it needs in ``<out>/.hpasc-done.json``; a task whose fingerprint is
unchanged is skipped, so re-running a recipe resumes it and editing one step re-runs it and
everything downstream. A failure names the step and its log file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import re
import stat
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpasc.config import read_yaml
from hpasc.errors import ConfigError, HpascError
from hpasc.io.atomic import atomic_write
from hpasc.io.runs import fold_dir
from hpasc.paths import anchor
from hpasc.pipeline.resources import Resources, check_resources, step_resources
from hpasc.pipeline.steps import STEP_KINDS, StepKind, TaskContext, step_kind

# re-exported: recipes and their step kinds are used through this module
__all__ = [
    "STEP_KINDS",
    "StepKind",
    "TaskContext",
    "load_recipe",
    "plan",
    "run_recipe",
    "run_task",
    "step_kind",
]

log = logging.getLogger("hpasc.pipeline.recipe")

DONE_FILE = ".hpasc-done.json"
RUNNING_FILE = ".hpasc-running.json"
_REF = re.compile(r"\$\{(data|work|out|recipe|fold|step:[A-Za-z0-9_.\-]+)\}")
_RESERVED = {"name", "kind", "needs", "folds", "description", "resources"}


def _is_setting(value: Any) -> bool:
    # lists are where data flows, not how a step behaves: the plan leaves them out (and paths)
    return isinstance(value, bool | int | float | str)


def task_settings(kind: str, params: dict[str, Any], recipe_dir: Path) -> dict[str, Any]:
    """What a task runs with, as the plan shows it: the kind's ``settings`` hook, else the
    scalar keys of its (resolved) parameters but its path keys, dicts one level deep
    (``options.scale_factor``)."""
    spec = STEP_KINDS[kind]
    if spec.settings is not None:
        return spec.settings(params, recipe_dir)
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in spec.paths:
            continue
        if isinstance(value, dict):
            out.update(
                {
                    f"{key}.{k}": v
                    for k, v in value.items()
                    if _is_setting(v) and f"{key}.{k}" not in spec.paths
                }
            )
        elif _is_setting(value):
            out[key] = value
    return out


@dataclasses.dataclass
class Step:
    name: str
    kind: str
    params: dict[str, Any]
    needs: list[str]
    folds: list[int] | None
    description: str = ""
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)  # the recipe's overrides

    @property
    def needs_resources(self) -> Resources:
        """What each task of this step asks for (its kind's defaults, then ``resources:``)."""
        return step_resources(self.kind, self.params, self.resources)


@dataclasses.dataclass
class Task:
    step: Step
    fold: int | None

    @property
    def label(self) -> str:
        return self.step.name if self.fold is None else f"{self.step.name}/fold-{self.fold}"


@dataclasses.dataclass
class Recipe:
    name: str
    path: Path
    steps: list[Step]  # in dependency order
    data: Path
    work: Path

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ConfigError(
            f"recipe {self.path}: no step named '{name}' (steps: {', '.join(s.name for s in self.steps)})"
        )

    def out_dir(self, step: str, fold: int | None = None) -> Path:
        base = self.work / step
        return base if fold is None else fold_dir(base, fold)  # a training step's run folder

    def tasks(self) -> list[Task]:
        out = []
        for s in self.steps:
            out += [Task(s, None)] if s.folds is None else [Task(s, k) for k in s.folds]
        return out


def _refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m[5:] for m in _REF.findall(value) if m.startswith("step:")]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    return []


def _expand_folds(
    spec: Any, kind: str, params: dict[str, Any], recipe_dir: Path, where: str
) -> list[int] | None:
    if spec is None:
        return None
    if spec == "all":
        counter = STEP_KINDS[kind].n_folds
        n = params.get("n_folds") or (counter(params, recipe_dir) if counter else None)
        if not n:
            raise ConfigError(f"{where}: 'folds: all' needs 'n_folds' for kind '{kind}'")
        return list(range(int(n)))
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list) and all(isinstance(k, int) for k in spec):
        return list(spec)
    raise ConfigError(
        f"{where}: 'folds' must be 'all', an integer or a list of integers, got {spec!r}"
    )


def load_recipe(
    path: str | Path, data: str | Path | None = None, work: str | Path | None = None
) -> Recipe:
    """Read and check a recipe: known kinds, unique names, existing dependencies, no cycles."""
    path = Path(path)
    doc = read_yaml(path, "recipe")
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise ConfigError(f"{path}: a recipe is a mapping with a 'steps' list")
    unknown = set(doc) - {"name", "description", "steps", "data", "work"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)} (known: name, description, data, work, steps)"
        )
    # The path rule (hpasc.paths): recipe and command-line paths are relative to the current
    # directory, and every ${...} expands to an absolute path.
    data_dir = Path(anchor(Path(data if data is not None else doc.get("data", ".")).expanduser()))
    work_dir = Path(
        anchor(Path(work if work is not None else doc.get("work", "work")).expanduser())
    )
    steps: dict[str, Step] = {}
    for i, raw in enumerate(doc["steps"]):
        where = f"{path} step {i + 1}"
        if not isinstance(raw, dict) or "name" not in raw or "kind" not in raw:
            raise ConfigError(f"{where}: each step needs 'name' and 'kind'")
        name, kind = str(raw["name"]), str(raw["kind"])
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ConfigError(
                f"{where}: step name '{name}' may use letters, digits, '_', '.', '-' only"
            )
        if name in steps:
            raise ConfigError(f"{where}: duplicate step name '{name}'")
        if kind not in STEP_KINDS:
            close = difflib.get_close_matches(kind, list(STEP_KINDS), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where} ('{name}'): unknown kind '{kind}'{hint} (kinds: {', '.join(sorted(STEP_KINDS))})"
            )
        params = {k: v for k, v in raw.items() if k not in _RESERVED}
        needs = list(dict.fromkeys([*map(str, raw.get("needs", []) or []), *_refs(params)]))
        for need in needs:
            if need not in steps:
                raise ConfigError(
                    f"{where} ('{name}'): needs step '{need}', which is not defined before it"
                )
        folds = _expand_folds(raw.get("folds"), kind, params, path.parent, f"{where} ('{name}')")
        resources = check_resources(raw.get("resources"), f"{where} ('{name}')")
        steps[name] = Step(
            name, kind, params, needs, folds, str(raw.get("description", "")), resources
        )
    return Recipe(str(doc.get("name", path.stem)), path, list(steps.values()), data_dir, work_dir)


def resolve(value: Any, recipe: Recipe, out: Path, fold: int | None) -> Any:
    """Substitute ``${data}``, ``${work}``, ``${out}``, ``${recipe}``, ``${fold}``, ``${step:NAME}``."""
    if isinstance(value, list):
        return [resolve(v, recipe, out, fold) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, recipe, out, fold) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "data":
            return str(recipe.data)
        if key == "work":
            return str(recipe.work)
        if key == "out":
            return str(out)
        if key == "recipe":
            return str(recipe.path.parent)
        if key == "fold":
            if fold is None:
                raise ConfigError(f"recipe {recipe.path}: ${{fold}} used in a step without folds")
            return str(fold)
        return str(recipe.out_dir(key[5:]))

    return _REF.sub(sub, value)


def _anchor_value(value: Any) -> Any:
    if isinstance(value, str):
        return anchor(value)
    if isinstance(value, list):
        return [anchor(v) if isinstance(v, str) else v for v in value]
    return value


def task_params(recipe: Recipe, task: Task, out: Path) -> dict[str, Any]:
    """A task's parameters: ``${...}`` substituted, and the values of its kind's path keys
    anchored at the current directory (docs/paths.md); other keys are never paths."""
    params = resolve(task.step.params, recipe, out, task.fold)
    for key in STEP_KINDS[task.step.kind].paths:
        found = _slot(params, key)
        if found is not None:
            found[0][found[1]] = _anchor_value(found[0][found[1]])
    return params


def _slot(params: dict[str, Any], key: str) -> tuple[dict[str, Any], str] | None:
    """Where a path key (``images``, or one level deep, ``options.cell_model``) sits in params."""
    parent, _, leaf = key.rpartition(".")
    holder = params.get(parent) if parent else params
    return (holder, leaf) if isinstance(holder, dict) and leaf in holder else None


def _path_values(kind: str, params: dict[str, Any]) -> list[str]:
    """The local paths among the values of ``kind``'s input path keys (URLs left out)."""
    out = []
    spec = STEP_KINDS[kind]
    for key in sorted(spec.paths - spec.outputs):
        found = _slot(params, key)
        value = found[0][found[1]] if found is not None else None
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v and "://" not in v:
                out.append(v)
    return out


def _path_signature(p: Path) -> list[Any]:
    """Signature of an input outside the work folder: its own size and mtime, one ``stat``.

    A folder is not listed (a data folder may hold 100k fields, and planning must stay
    instant): files added, removed or renamed in it change its mtime; files rewritten in
    place, or changes inside its sub-folders, need ``--force STEP``.
    """
    try:
        st = p.stat()
    except OSError:
        return []
    return [st.st_size if stat.S_ISREG(st.st_mode) else None, st.st_mtime_ns]


def fingerprint(recipe: Recipe, task: Task, params: dict[str, Any]) -> str:
    parts: dict[str, Any] = {
        "kind": task.step.kind,
        "params": params,
        "fold": task.fold,
        "needs": {},
    }
    for need in task.step.needs:
        parts["needs"][need] = [
            _read_done(recipe.out_dir(need, k)).get("fingerprint") for k in _folds_of(recipe, need)
        ]
    inputs = {}
    work = recipe.work.resolve()
    for v in _path_values(task.step.kind, params):
        p = Path(v)
        # inputs from outside the work folder: their content may change between runs (what is
        # inside it is covered by the fingerprints of the steps that wrote it)
        if p != work and work not in p.resolve().parents:
            inputs[v] = _path_signature(p)
    parts["inputs"] = inputs
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _folds_of(recipe: Recipe, name: str) -> list[int | None]:
    s = recipe.step(name)
    return [None] if s.folds is None else list(s.folds)


def _read_done(out: Path, marker: str = DONE_FILE) -> dict[str, Any]:
    f = out / marker
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def _select(
    recipe: Recipe, until: str | None, only: list[str] | None, fold: int | None
) -> list[Task]:
    names = [s.name for s in recipe.steps]
    if until:
        recipe.step(until)
        keep: set[str] = set()
        stack = [until]
        while stack:
            n = stack.pop()
            if n not in keep:
                keep.add(n)
                stack += recipe.step(n).needs
        names = [n for n in names if n in keep]
    if only:
        for n in only:
            recipe.step(n)
        names = [n for n in names if n in only]
    tasks = [t for t in recipe.tasks() if t.step.name in names]
    if fold is not None:
        tasks = [t for t in tasks if t.fold is None or t.fold == fold]
    return tasks


def forced_steps(recipe: Recipe, force: list[str] | None) -> list[str]:
    """The steps ``--force`` re-runs: the named ones and every step that depends on them,
    transitively, in recipe order (a re-run output may differ even if its fingerprint does not)."""
    forced = set(force or [])
    for n in forced:
        recipe.step(n)
    for s in recipe.steps:  # recipe order is a dependency order: one pass reaches every dependent
        if forced.intersection(s.needs):
            forced.add(s.name)
    return [s.name for s in recipe.steps if s.name in forced]


@dataclasses.dataclass
class PlanItem:
    task: Task
    status: str  # "done", "run", "forced"
    params: dict[str, Any]
    fingerprint: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


def plan(
    recipe: Recipe,
    until: str | None = None,
    only: list[str] | None = None,
    force: list[str] | None = None,
    fold: int | None = None,
) -> list[PlanItem]:
    """What would run, in order, and what is already done (``forced``: named by ``force``, or
    depending on such a step)."""
    force = set(forced_steps(recipe, force))
    items = []
    described: dict[str, dict[str, Any]] = {}  # the folds of a step share its settings
    for task in _select(recipe, until, only, fold):
        out = recipe.out_dir(task.step.name, task.fold)
        params = task_params(recipe, task, out)
        fp = fingerprint(recipe, task, params)
        if task.step.name in force:
            status = "forced"
        elif _read_done(out).get("fingerprint") == fp:
            status = "done"
        else:
            status = "run"
        if task.step.name not in described:
            described[task.step.name] = task_settings(task.step.kind, params, recipe.path.parent)
        items.append(PlanItem(task, status, params, fp, described[task.step.name]))
    return items


def format_plan(items: list[PlanItem]) -> str:
    """One line per task (number, status, label, kind, needs), then, indented, its settings."""
    lines = []
    for i, it in enumerate(items, 1):
        s = it.task.step
        needs = f"  <- {', '.join(s.needs)}" if s.needs else ""
        lines.append(f"{i:3d}. [{it.status:6s}] {it.task.label}  ({s.kind}){needs}")
        if it.settings:
            lines.append("       " + ", ".join(f"{k}={v}" for k, v in it.settings.items()))
    return "\n".join(lines)


class StepFailed(HpascError):
    pass


@contextlib.contextmanager
def _log_to(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def task_log(recipe: Recipe, task: Task) -> Path:
    """The log file of a task: ``WORK/logs/<step>[-fold-<k>].log``."""
    return recipe.work / "logs" / f"{task.label.replace('/', '-')}.log"


def find_task(recipe: Recipe, label: str) -> Task:
    """The task called ``label`` (``step`` or ``step/fold-k``)."""
    for task in recipe.tasks():
        if task.label == label:
            return task
    raise ConfigError(f"recipe {recipe.path}: no task '{label}' (tasks are STEP or STEP/fold-K)")


def run_task(
    recipe: Recipe,
    task: Task,
    forced: bool = False,
    echo: Callable[[str], None] = print,
    prefix: str = "",
) -> PlanItem:
    """Run one task (a step, or one fold of it) unless it is finished with the same fingerprint.

    The one way a task runs, in this process (``hpasc run`` in order) or in a process of its own
    (:mod:`hpasc.pipeline.engine`: the local and SLURM executors): it checks that what the task
    needs has finished, writes the running marker, logs to :func:`task_log`, and writes the
    done marker on success. ``forced`` runs it even if finished; ``prefix`` starts each echoed
    line (``[3/19] ``). Returns the task's plan item, ``status`` ``done`` if it was skipped.
    """
    name = task.step.name
    for need in task.step.needs:
        for k in _folds_of(recipe, need):
            if not _read_done(recipe.out_dir(need, k)):
                raise StepFailed(
                    f"step '{task.label}' needs '{need}', which has not run yet "
                    f"(run without --only, or with --until {need})"
                )
    out = recipe.out_dir(name, task.fold)
    params = task_params(recipe, task, out)
    fp = fingerprint(recipe, task, params)
    item = PlanItem(task, "run", params, fp)
    if not forced and _read_done(out).get("fingerprint") == fp:
        echo(f"{prefix}{task.label}: done, skipped")
        item.status = "done"
        return item
    log_file = task_log(recipe, task)
    running = out / RUNNING_FILE
    resume = not forced and _read_done(out, RUNNING_FILE).get("fingerprint") == fp
    n_folds = len(task.step.folds) if task.step.folds else None
    ctx = TaskContext(
        name,
        out,
        task.fold,
        recipe.data,
        recipe.work,
        recipe.path.parent,
        n_folds,
        log_file,
        resume,
    )
    echo(f"{prefix}{task.label}: {task.step.kind}{' (resuming)' if resume else ''} ...")
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_FILE).unlink(missing_ok=True)
    atomic_write(running, json.dumps({"fingerprint": fp}))
    start = time.time()
    with _log_to(log_file):
        log.info(
            "step %s kind %s params %s",
            task.label,
            task.step.kind,
            json.dumps(params, default=str),
        )
        try:
            STEP_KINDS[task.step.kind].run(params, ctx)
        except BaseException as exc:  # recorded in the log, re-raised with the step's name
            with log_file.open("a") as fh:
                fh.write(traceback.format_exc())
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StepFailed(
                f"step '{task.label}' ({task.step.kind}) failed: {msg} (log: {log_file})"
            ) from exc
    seconds = time.time() - start
    atomic_write(out / DONE_FILE, json.dumps({"fingerprint": fp, "seconds": round(seconds, 1)}))
    running.unlink(missing_ok=True)
    echo(f"{prefix}{task.label}: finished in {seconds:.1f} s")
    return item


def run_recipe(
    recipe: Recipe,
    until: str | None = None,
    only: list[str] | None = None,
    force: list[str] | None = None,
    fold: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[PlanItem]:
    """Run the selected tasks in order, in this process, skipping finished ones. Returns the
    plan that was run. (:func:`hpasc.pipeline.engine.execute` runs them in parallel.)"""
    selected = _select(recipe, until, only, fold)
    forced = set(forced_steps(recipe, force))
    n = len(selected)
    return [
        run_task(recipe, task, task.step.name in forced, echo, f"[{i}/{n}] ")
        for i, task in enumerate(selected, 1)
    ]
