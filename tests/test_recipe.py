import json
from pathlib import Path

import pytest

from hpasc.errors import ConfigError
from hpasc.recipe import STEP_KINDS, StepFailed, load_recipe, plan, run_recipe, step_kind

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
    run_recipe(r, force=["a"], echo=lambda s: None)
    assert CALLS == ["a"]  # same fingerprint downstream: a's output fingerprint is the same


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
