"""The SLURM executor against a fake SLURM on PATH (tests/fake_slurm.py): the reference recipe's
whole graph submitted at once with its dependencies and resources, and the demo recipe run end
to end through the fake jobs with the same outputs as a local run."""

import json

import pytest

from conftest import failing_recipe
from fake_slurm import install, read_submissions
from hpasc.pipeline.recipe import load_recipe, plan
from test_end_to_end import shrunken_demo
from test_engine import assert_same_outputs, inline_demo  # noqa: F401 (a fixture)
from test_recipes_shipped import PFCELL


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    install(tmp_path / "bin")
    state = tmp_path / "slurm-state"
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("HPASC_SLURM_POLL_S", "0.5")
    return state


def _label(sub: dict) -> str:
    name = sub["options"]["job-name"]
    assert name.startswith("hpasc-")
    return name[len("hpasc-") :]


def test_reference_graph_submitted_at_once_with_needs_and_gpus(fake_slurm, tmp_path, cli):
    data, work = tmp_path / "data", tmp_path / "work"
    r = cli(
        "run", PFCELL, "--data", data, "--work", work,
        "--executor", "slurm", "--detach", "--slurm-partition", "gpu",
        "--slurm-option", "qos=high",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    items = plan(load_recipe(PFCELL, data=data, work=work))
    subs = read_submissions(fake_slurm)
    assert len(subs) == len(items) == 83  # 83 since issue 11 removed the public-768 resize
    assert "83 jobs submitted" in r.stdout
    by_id = {s["job_id"]: _label(s) for s in subs}
    assert list(by_id.values()) == [it.task.label for it in items]  # recipe order
    tasks_of = {}
    for it in items:
        tasks_of.setdefault(it.task.step.name, []).append(it.task.label)
    for it, sub in zip(items, subs, strict=True):
        wanted = {label for need in it.task.step.needs for label in tasks_of[need]}
        assert {by_id[d] for d in sub["afterok"]} == wanted, it.task.label
        assert sub["options"]["partition"] == "gpu" and sub["options"]["qos"] == "high"
        assert sub["options"]["kill-on-invalid-dep"] == "yes"
        if it.task.step.kind.startswith("train-"):
            assert sub["options"]["gpus-per-node"] == "1", it.task.label
            assert sub["options"]["cpus-per-task"] == "4" and sub["options"]["time"] == "1440"
        if it.task.step.kind in ("resize", "crop"):  # CPU stages: their workers, no GPU
            assert "gpus-per-node" not in sub["options"], it.task.label
            assert sub["options"]["cpus-per-task"] == "8"
    # e.g. the 1536 model's fold 2 waits for every fold of the 768 model it starts from
    one = subs[[it.task.label for it in items].index("cam-b2-1536/fold-2")]
    assert {f"cam-b2-768/fold-{k}" for k in range(5)} <= {by_id[d] for d in one["afterok"]}
    status = json.loads((work / ".hpasc-run" / "status.json").read_text())
    assert status["executor"] == "slurm" and len(status["tasks"]) == 83
    assert {t["job_id"] for t in status["tasks"]} == set(by_id)


def test_a_ddp_step_asks_for_nodes_and_one_task_per_gpu(fake_slurm, tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n"
        "  - {name: a, kind: synth, n_images: 2, size: 64}\n"
        "  - name: big\n"
        "    kind: group\n"
        "    needs: [a]\n"
        "    resources: {gpus: 4, nodes: 2, cpus: 6, mem_gb: 32, time_min: 90}\n"
    )
    r = cli("run", recipe, "--work", tmp_path / "w", "--executor", "slurm", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    a, big = read_submissions(fake_slurm)
    assert big["afterok"] == [a["job_id"]] and a["afterok"] == []
    o = big["options"]
    assert (o["nodes"], o["gpus-per-node"], o["ntasks-per-node"]) == ("2", "4", "4")
    assert (o["cpus-per-task"], o["mem"], o["time"]) == ("6", "32768M", "90")


@pytest.mark.slow
def test_demo_end_to_end_through_fake_slurm_equals_local(
    fake_slurm,
    tmp_path,
    cli,
    monkeypatch,
    inline_demo,  # noqa: F811 (the imported fixture)
):
    monkeypatch.setenv("FAKE_SLURM_RUN", "1")
    recipe = shrunken_demo(tmp_path)
    slurm = tmp_path / "slurm"
    r = cli("run", recipe, "--work", slurm, "--executor", "slurm", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    subs = read_submissions(fake_slurm)
    assert len(subs) == 19 and all(
        (fake_slurm / "state" / s["job_id"]).read_text() == "COMPLETED" for s in subs
    )
    status = json.loads((slurm / ".hpasc-run" / "status.json").read_text())
    assert status["counts"]["done"] == 19
    # the sequential run's outputs, which the local executor reproduces (tests/test_engine.py)
    assert_same_outputs(inline_demo, slurm)
    # everything finished: a second submission submits nothing
    r = cli("run", recipe, "--work", slurm, "--executor", "slurm")
    assert r.returncode == 0 and "every selected task is finished" in r.stdout
    assert len(read_submissions(fake_slurm)) == 19


def test_a_failed_job_names_its_log_and_cancels_what_needs_it(
    fake_slurm, tmp_path, cli, monkeypatch
):
    monkeypatch.setenv("FAKE_SLURM_RUN", "1")
    recipe = failing_recipe(tmp_path, "{name: other, kind: group}")
    r = cli("run", recipe, "--data", tmp_path, "--work", tmp_path / "w", "--executor", "slurm")
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert err.startswith("error: step 'folds' (folds) failed: SLURM job"), err
    assert f"log: {tmp_path / 'w' / 'logs' / 'folds.log'}" in err
    assert err.endswith("not run because of it: after, later"), err
    states = json.loads((tmp_path / "w/.hpasc-run/status.json").read_text())["tasks"]
    assert [t["state"] for t in states] == ["failed", "blocked", "blocked", "done"]
