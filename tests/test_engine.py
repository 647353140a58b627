"""The local executor of hpasc.pipeline.engine: independent tasks in parallel processes within
--cores/--gpus, the same outputs as the sequential run, failures naming their log and the tasks
that could not run, resources from the step kinds and the recipe."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import failing_recipe
from hpasc.errors import ConfigError
from hpasc.pipeline import engine, graph
from hpasc.pipeline.recipe import load_recipe, run_recipe
from hpasc.pipeline.resources import Resources
from test_end_to_end import shrunken_demo

# what differs between two runs of the same recipe in two work folders: paths, times, logs
_SKIP_DIRS = {"logs", ".hpasc-run", "checkpoints"}
_SKIP_SUFFIXES = {".ckpt", ".yaml", ".html", ".log"}
_SKIP_NAMES = {".hpasc-done.json", ".hpasc-output.json", "manifest.json"}


def _outputs(work: Path) -> dict[str, Path]:
    out = {}
    for p in work.rglob("*"):
        rel = p.relative_to(work)
        if p.is_dir() or _SKIP_DIRS & set(rel.parts[:-1]) or p.suffix in _SKIP_SUFFIXES:
            continue
        if p.name not in _SKIP_NAMES:
            out[str(rel)] = p
    return out


def assert_same_outputs(a: Path, b: Path) -> None:
    """Every output file of work folder ``a`` is in ``b`` with the same content (tables to
    float tolerance: two processes may order a reduction differently)."""
    fa, fb = _outputs(a), _outputs(b)
    assert sorted(fa) == sorted(fb)
    assert any(k.endswith(".parquet") for k in fa) and any(k.endswith(".png") for k in fa)
    for rel, pa in fa.items():
        pb = fb[rel]
        if pa.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(pa), pd.read_parquet(pb), rtol=1e-4)
        elif pa.suffix == ".csv" and pa.name == "metrics.csv":
            pd.testing.assert_frame_equal(pd.read_csv(pa), pd.read_csv(pb), rtol=1e-4)
        elif pa.name == "metric.json":
            ma, mb = json.loads(pa.read_text()), json.loads(pb.read_text())
            assert ma["mAP"] == pytest.approx(mb["mAP"], abs=1e-4), rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


@pytest.fixture(scope="session")
def inline_demo(tmp_path_factory):
    """The shrunken demo recipe run one task after another in the test process: the reference
    outputs the executors must reproduce."""
    tmp = tmp_path_factory.mktemp("inline-demo")
    recipe = shrunken_demo(tmp)
    run_recipe(load_recipe(recipe, work=tmp / "work"), echo=lambda s: None)
    return tmp / "work"


def _intervals(work: Path) -> dict[str, tuple[float, float]]:
    tasks = json.loads((work / ".hpasc-run" / "status.json").read_text())["tasks"]
    return {t["task"]: (t["started"], t["finished"]) for t in tasks}


@pytest.mark.slow
def test_local_runs_independent_tasks_in_parallel_with_the_sequential_outputs(
    tmp_path, cli, inline_demo
):
    recipe = shrunken_demo(tmp_path)
    work = tmp_path / "work"
    start = time.time()
    r = cli("run", recipe, "--work", work, "--executor", "local", "--cores", "2", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = json.loads((work / ".hpasc-run" / "status.json").read_text())
    assert status["counts"] == {"pending": 0, "running": 0, "done": 19, "failed": 0, "blocked": 0}
    spans = _intervals(work)
    # the two synthetic sets (1 core each) ran at the same time, and so did the two mask sets
    for a, b in (("train-fields", "test-fields"), ("train-masks", "test-masks")):
        assert spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1], (a, b, spans)
    # a task starts only after what it needs has finished
    assert spans["cam/fold-0"][0] >= max(spans["train-masks"][1], spans["train-fields"][1])
    assert spans["report"][0] >= spans["metric"][1]
    assert all(Path(t["log"]).is_file() for t in status["tasks"])
    assert_same_outputs(inline_demo, work)
    print(f"local executor, shrunken demo on 2 cores: {time.time() - start:.0f} s")


def test_failed_task_names_its_log_and_what_could_not_run(tmp_path, cli):
    recipe = failing_recipe(tmp_path, "{name: fields, kind: synth, n_images: 1, size: 128}")
    work = tmp_path / "w"
    r = cli("run", recipe, "--data", tmp_path, "--work", work)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    log = work / "logs" / "folds.log"
    assert err.startswith("error: step 'folds' (folds) failed: "), err
    assert f"(log: {log})" in err and err.endswith("not run because of it: after, later"), err
    assert "Traceback" in log.read_text()
    # the independent task still ran
    assert (work / "fields" / ".hpasc-done.json").is_file()
    states = {
        t["task"]: t["state"]
        for t in json.loads((work / ".hpasc-run/status.json").read_text())["tasks"]
    }
    assert states == {"folds": "failed", "after": "blocked", "later": "blocked", "fields": "done"}
    # fixed: the next run starts the failed task and what needs it, not the finished one
    (tmp_path / "labels.csv").write_text(
        "ID,Label\n" + "".join(f"f{i},{i % 3}\n" for i in range(9))
    )
    r = cli("run", recipe, "--data", tmp_path, "--work", work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fields:" not in r.stdout and "3 tasks run, 1 already done" in r.stdout


def _toy_recipe(tmp_path: Path, body: str):
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n" + body)
    return load_recipe(path, data=tmp_path, work=tmp_path / "w")


def test_graph_leaves_finished_tasks_out_and_reruns_downstream(tmp_path):
    r = _toy_recipe(
        tmp_path,
        "  - {name: a, kind: group}\n"
        "  - {name: b, kind: group, needs: [a], folds: [0, 1]}\n"
        "  - {name: c, kind: group, needs: [b]}\n"
        "  - {name: d, kind: group}\n",
    )
    nodes = engine.task_graph(r)
    assert [(n.label, n.deps) for n in nodes] == [
        ("a", []),
        ("b/fold-0", ["a"]),
        ("b/fold-1", ["a"]),
        ("c", ["b/fold-0", "b/fold-1"]),
        ("d", []),
    ]
    run_recipe(r, echo=lambda s: None)
    assert engine.task_graph(r) == []
    # --force b: b and what depends on it, and b waits for nothing (a is finished)
    assert [(n.label, n.deps) for n in engine.task_graph(r, force=["b"])] == [
        ("b/fold-0", []),
        ("b/fold-1", []),
        ("c", ["b/fold-0", "b/fold-1"]),
    ]
    assert [n.label for n in engine.task_graph(r, until="b", force=["a"], fold=1)] == [
        "a",
        "b/fold-1",
    ]
    assert [n.label for n in engine.task_graph(r, only=["c"], force=["c"])] == ["c"]


def test_gpus_and_cores_are_handed_out_within_the_budget(tmp_path, monkeypatch):
    r = _toy_recipe(
        tmp_path,
        "".join(
            f"  - {{name: t{i}, kind: group, resources: {{gpus: 1, cpus: 1}}}}\n" for i in range(4)
        )
        + "  - {name: wide, kind: group, resources: {cpus: 64}}\n",
    )
    seen = tmp_path / "seen.jsonl"

    def fake_start(saved, node, cpus, gpus):  # a process that records what it was given
        code = (
            "import json, sys, time; t = time.time(); time.sleep(0.6); "
            f"open({str(seen)!r}, 'a').write(json.dumps([sys.argv[1], sys.argv[2], {cpus}, t, time.time()]) + '\\n')"
        )
        return subprocess.Popen([sys.executable, "-c", code, node.label, ",".join(gpus)])

    monkeypatch.setattr(engine, "_start", fake_start)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    engine.execute(r, "local", cores=4, echo=lambda s: None)
    rows = [json.loads(line) for line in seen.read_text().splitlines()]
    by = {label: (gpus, cpus, t0, t1) for label, gpus, cpus, t0, t1 in rows}
    assert sorted(by) == ["t0", "t1", "t2", "t3", "wide"]
    assert all(by[f"t{i}"][0] in ("3", "5") for i in range(4))
    assert by["wide"][:2] == ("", 4)  # more cores than the budget: all of it, no GPU
    for a in by:  # at most 2 GPU tasks at once, never one GPU twice; 'wide' alone
        for b in by:
            overlap = a < b and by[a][2] < by[b][3] - 0.05 and by[b][2] < by[a][3] - 0.05
            if overlap:
                assert "wide" not in (a, b) and by[a][0] != by[b][0], (a, b, by)
    assert by["t0"][2] < by["t1"][3] and by["t1"][2] < by["t0"][3]  # two GPUs: two at once


def test_resources_from_kind_defaults_workers_and_the_recipe(tmp_path):
    r = _toy_recipe(
        tmp_path,
        "  - {name: f, kind: synth, n_images: 1, size: 64}\n"
        "  - {name: small, kind: resize, input: '${step:f}/images', size: 32, workers: 6}\n"
        "  - {name: s, kind: segment, images: '${step:f}/images', resources: {gpus: 0}}\n"
        "  - name: big\n"
        "    kind: group\n"
        "    resources: {gpus: 2, nodes: 3, mem_gb: 1.5}\n",
    )
    assert r.step("f").needs_resources == Resources()
    assert r.step("small").needs_resources.cpus == 6
    assert r.step("s").needs_resources.gpus == 0
    big = r.step("big").needs_resources
    assert (big.gpus, big.nodes, big.mem_gb, big.processes_per_node) == (2, 3, 1.5, 2)
    from hpasc.pipeline.resources import KIND_DEFAULTS

    assert KIND_DEFAULTS["train-image-level"].gpus == KIND_DEFAULTS["train-cell-level"].gpus == 1


@pytest.mark.parametrize(
    ("resources", "pattern"),
    [
        ("{gpu: 1}", "unknown resource 'gpu'; did you mean gpus"),
        ("{cpus: 0}", "'cpus' must be an integer >= 1"),
        ("{gpus: 1.5}", "'gpus' must be an integer"),
        ("4", "'resources' must be a mapping"),
    ],
)
def test_bad_resources_are_config_errors(tmp_path, resources, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _toy_recipe(tmp_path, f"  - {{name: a, kind: group, resources: {resources}}}\n")


def test_cli_refuses_detach_without_slurm_and_slurm_without_srun(tmp_path, cli, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - {name: a, kind: group}\n")
    r = cli("run", recipe, "--work", tmp_path / "w", "--detach")
    assert r.returncode == 2 and "--detach needs --executor slurm" in r.stderr
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no srun there
    r = cli("run", recipe, "--work", tmp_path / "w", "--executor", "slurm")
    assert r.returncode == 2 and "SLURM login node" in r.stderr, r.stderr
    r = cli("run", recipe, "--work", tmp_path / "w", "--executor", "dask")
    assert r.returncode == 2 and "unknown (executors: local, slurm" in r.stderr


def test_live_table_shows_each_tasks_state_time_and_log(tmp_path):
    import io

    from rich.console import Console

    r = _toy_recipe(
        tmp_path,
        "  - {name: a, kind: group}\n  - {name: b, kind: group, needs: [a]}\n"
        "  - {name: c, kind: group}\n",
    )
    nodes = engine.task_graph(r)
    lines: list[str] = []
    board = graph.Board(r, nodes, "local", lines.append)
    assert board._live is None  # stderr is no terminal here: lines instead of a live table
    board.changed(nodes[0], "running")
    board.changed(nodes[0], "failed", "boom")
    graph.block_dependents(nodes, board)
    out = io.StringIO()
    Console(file=out, width=200).print(board._table())
    table = out.getvalue()
    assert "1 pending, 1 failed, 1 blocked" in table
    for label, state in (("a", "failed"), ("b", "blocked"), ("c", "pending")):
        row = next(line for line in table.splitlines() if f" {label} " in line)
        assert state in row and str(tmp_path / "w" / "logs" / f"{label}.log") in row
    assert lines[-1] == "[2/3] b: not run: it needs 'a', which failed"
    status = json.loads(engine.status_file(r).read_text())
    assert [t["state"] for t in status["tasks"]] == ["failed", "blocked", "pending"]
