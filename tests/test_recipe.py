import json
from pathlib import Path

import pytest

from hpasc.errors import ConfigError
from hpasc.pipeline.recipe import STEP_KINDS, StepFailed, load_recipe, plan, run_recipe, step_kind

CALLS: list[str] = []


@step_kind("toy-write")
def _toy_write(p, ctx):
    CALLS.append(ctx.step if ctx.fold is None else f"{ctx.step}/{ctx.fold}")
    (ctx.out / "value.txt").write_text(str(p.get("value", "")) + p.get("suffix", ""))


@step_kind("toy-fail")
def _toy_fail(p, ctx):
    raise RuntimeError("boom")


RECIPE = """
name: toy
steps:
  - name: a
    kind: toy-write
    value: 1
  - name: b
    kind: toy-write
    value: ${step:a}/value.txt
    folds: [0, 1]
  - name: c
    kind: toy-write
    needs: [b]
    value: 3
"""


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    CALLS.clear()
    return p


def test_order_skip_and_force(recipe, tmp_path):
    r = load_recipe(recipe, data=tmp_path, work=tmp_path / "work")
    assert [s.name for s in r.steps] == ["a", "b", "c"]
    assert r.step("b").needs == ["a"]
    run_recipe(r, echo=lambda s: None)
    assert CALLS == ["a", "b/0", "b/1", "c"]
    assert (tmp_path / "work/b/fold-1/value.txt").read_text() == str(tmp_path / "work/a/value.txt")
    CALLS.clear()
    run_recipe(r, echo=lambda s: None)
    assert CALLS == []  # everything finished: skipped
    assert {it.status for it in plan(r)} == {"done"}
    CALLS.clear()
    # a forced step's dependents re-run too, transitively, though their fingerprints are unchanged
    assert [(it.task.label, it.status) for it in plan(r, force=["b"])] == [
        ("a", "done"),
        ("b/fold-0", "forced"),
        ("b/fold-1", "forced"),
        ("c", "forced"),
    ]
    run_recipe(r, force=["a"], echo=lambda s: None)
    assert CALLS == ["a", "b/0", "b/1", "c"]
    CALLS.clear()
    run_recipe(r, force=["c"], echo=lambda s: None)
    assert CALLS == ["c"]  # nothing depends on c


def test_edit_reruns_downstream(recipe, tmp_path):
    r = load_recipe(recipe, data=tmp_path, work=tmp_path / "work")
    run_recipe(r, echo=lambda s: None)
    CALLS.clear()
    recipe.write_text(RECIPE.replace("value: 1", "value: 2"))
    r = load_recipe(recipe, data=tmp_path, work=tmp_path / "work")
    run_recipe(r, echo=lambda s: None)
    assert CALLS == ["a", "b/0", "b/1", "c"]


def test_until_only_fold(recipe, tmp_path):
    r = load_recipe(recipe, data=tmp_path, work=tmp_path / "work")
    run_recipe(r, until="b", fold=1, echo=lambda s: None)
    assert CALLS == ["a", "b/1"]
    with pytest.raises(StepFailed, match="needs 'b'"):
        run_recipe(r, only=["c"], echo=lambda s: None)


def test_failure_names_step_and_log(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("steps:\n  - name: x\n    kind: toy-fail\n")
    r = load_recipe(p, work=tmp_path / "w")
    with pytest.raises(
        StepFailed, match=r"step 'x' \(toy-fail\) failed: boom \(log: .*x\.log\)"
    ) as e:
        run_recipe(r, echo=lambda s: None)
    log = str(e.value).split("log: ")[1].rstrip(")")
    assert "RuntimeError: boom" in Path(log).read_text()
    assert not (tmp_path / "w/x/.hpasc-done.json").exists()


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        (
            "steps:\n  - name: x\n    kind: toy-writ\n",
            "unknown kind 'toy-writ'; did you mean toy-write",
        ),
        ("steps:\n  - name: x\n    kind: toy-write\n    value: ${step:y}\n", "needs step 'y'"),
        ("steps:\n  - {name: x, kind: toy-write}\n  - {name: x, kind: toy-write}\n", "duplicate"),
        ("stepz: []\n", "'steps' list"),
        ("steps:\n  - {name: x, kind: toy-write, folds: all}\n", "n_folds"),
    ],
)
def test_bad_recipes(tmp_path, body, pattern):
    p = tmp_path / "r.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=pattern):
        load_recipe(p)


def test_dry_run_cli(recipe, tmp_path, cli):
    assert "toy-write" in STEP_KINDS
    # the CLI runs in another process without the toy kinds: use a built-in kind
    (tmp_path / "labels.csv").write_text(
        "ID,Label\n" + "".join(f"f{i},{i % 3}\n" for i in range(12))
    )
    p = tmp_path / "r2.yaml"
    p.write_text(
        "steps:\n  - name: folds\n    kind: folds\n    labels: ${data}/labels.csv\n    n_folds: 3\n"
    )
    r = cli("run", p, "--data", tmp_path, "--work", tmp_path / "w", "--dry-run")
    assert r.returncode == 0 and "[run   ] folds" in r.stdout, r.stderr
    r = cli("run", p, "--data", tmp_path, "--work", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "w/folds/folds.csv").exists()
    assert json.loads((tmp_path / "w/folds/.hpasc-done.json").read_text())["fingerprint"]
    r = cli("run", p, "--data", tmp_path, "--work", tmp_path / "w", "--dry-run")
    assert "[done  ] folds" in r.stdout


@step_kind("toy-resume")
def _toy_resume(p, ctx):
    CALLS.append(f"resume={ctx.resume}")
    if not (ctx.out / "half").exists():
        (ctx.out / "half").write_text("x")
        raise RuntimeError("killed half way")


def test_interrupted_task_resumes(tmp_path):
    CALLS.clear()
    p = tmp_path / "r.yaml"
    p.write_text("steps:\n  - name: x\n    kind: toy-resume\n")
    r = load_recipe(p, work=tmp_path / "w")
    with pytest.raises(StepFailed):
        run_recipe(r, echo=lambda s: None)
    run_recipe(r, echo=lambda s: None)
    assert CALLS == ["resume=False", "resume=True"]


def test_force_cli_names_the_dependents(tmp_path, cli):
    """A tiny real run through the CLI: --force on the first step re-runs the one after it."""
    (tmp_path / "labels.csv").write_text(
        "ID,Label\n" + "".join(f"f{i},{i % 3}\n" for i in range(12))
    )
    p = tmp_path / "r.yaml"
    p.write_text(
        "steps:\n"
        "  - {name: folds, kind: folds, labels: '${data}/labels.csv', n_folds: 3}\n"
        "  - {name: all, kind: group, needs: [folds]}\n"
        "  - {name: other, kind: group}\n"
    )
    args = ("run", p, "--data", tmp_path, "--work", tmp_path / "w")
    assert cli(*args).returncode == 0
    written = tmp_path / "w/folds/folds.csv"
    written.unlink()  # the done record stays: only a real re-run writes it again
    r = cli(*args, "--force", "folds", "--dry-run")
    assert "forced: folds, and what depends on it: all" in r.stdout, r.stdout + r.stderr
    assert "[forced] folds" in r.stdout and "[forced] all" in r.stdout
    assert "[done  ] other" in r.stdout
    r = cli(*args, "--force", "folds")
    assert r.returncode == 0, r.stderr
    # the engine (local executor) starts the forced tasks only; the finished one is left out
    assert "folds: started" in r.stdout and "all: started" in r.stdout
    assert "other:" not in r.stdout and "2 tasks run, 1 already done" in r.stdout
    assert written.is_file()


def test_demo_plan_force_reaches_everything_downstream(tmp_path):
    from hpasc.pipeline.recipe import forced_steps

    demo = Path(__file__).resolve().parents[1] / "src/hpasc/configs/recipes/demo.yaml"
    r = load_recipe(demo, work=tmp_path / "w")
    assert forced_steps(r, ["test-cell"]) == [
        "test-cell",
        "ensemble",
        "submission",
        "baseline-cells",
        "baseline-submission",
        "metric",
        "report",
    ]
    items = {it.task.label: it.status for it in plan(r, force=["cell"])}
    assert items["cell/fold-1"] == items["test-cell"] == items["report"] == "forced"
    assert items["cam/fold-0"] == items["test-cam"] == "run"  # upstream of cell: not forced


@step_kind("toy-paths", paths=("src", "many", "opts.model"), outputs=("dest",))
def _toy_paths(p, ctx):
    CALLS.append(p)


def test_only_declared_path_keys_are_paths(tmp_path, monkeypatch):
    """A value that looks like a path in a non-path key stays as written, is shown in the plan and
    is not fingerprinted; path keys are anchored at the cwd and their inputs fingerprinted."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "looks").mkdir()
    p = tmp_path / "r.yaml"
    p.write_text(
        "steps:\n"
        "  - name: x\n"
        "    kind: toy-paths\n"
        "    src: in\n"
        "    many: [in, s3://bucket/k]\n"
        "    dest: outside\n"
        "    cls: looks\n"
        "    preset: pfcell-2021.yaml\n"
        "    interpolation: a/b\n"
        "    opts: {model: in, name: looks}\n"
    )
    r = load_recipe(p, work=tmp_path / "w")
    (item,) = plan(r)
    assert item.params["src"] == str(tmp_path / "in")
    assert item.params["many"] == [str(tmp_path / "in"), "s3://bucket/k"]
    assert item.params["dest"] == str(tmp_path / "outside")
    assert item.params["cls"] == "looks"
    assert item.params["preset"] == "pfcell-2021.yaml"
    assert item.params["interpolation"] == "a/b"
    assert item.params["opts"] == {"model": str(tmp_path / "in"), "name": "looks"}
    assert item.settings == {
        "cls": "looks",
        "preset": "pfcell-2021.yaml",
        "interpolation": "a/b",
        "opts.name": "looks",
    }
    CALLS.clear()
    run_recipe(r, echo=lambda s: None)
    (called,) = CALLS
    assert called == item.params
    # touching the folder named by a non-path key, or the output, changes nothing ...
    (tmp_path / "looks/new").write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/new").write_text("x")
    assert plan(r)[0].status == "done"
    # ... a file added to an input folder re-runs the step
    (tmp_path / "in/new").write_text("x")
    assert plan(r)[0].status == "run"


def test_plan_does_not_list_or_stat_an_input_folder(tmp_path, monkeypatch):
    """Planning a step over a folder of 20k fields costs a few system calls, not 20k."""
    data = tmp_path / "data"
    images = data / "images"
    images.mkdir(parents=True)
    for i in range(20_000):
        (images / f"f{i}.png").touch()
    (data / "labels.csv").write_text("ID,Label\n")
    p = tmp_path / "r.yaml"
    p.write_text(
        "steps:\n"
        "  - {name: m, kind: segment, images: '${data}/images', method: classical}\n"
        "  - {name: c, kind: crop, images: '${data}/images', masks: '${step:m}', size: 8}\n"
        "  - {name: f, kind: folds, labels: '${data}/labels.csv'}\n"
    )
    r = load_recipe(p, data=data, work=tmp_path / "w")
    import os

    counts = {"stat": 0, "scandir": 0, "listdir": 0}

    def counting(name):
        real = getattr(os, name)

        def call(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return call

    for name in counts:
        monkeypatch.setattr(os, name, counting(name))
    items = plan(r)
    monkeypatch.undo()
    assert [it.status for it in items] == ["run", "run", "run"]
    assert counts["scandir"] == counts["listdir"] == 0, counts
    assert counts["stat"] < 100, counts
