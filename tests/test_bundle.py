"""`hpasc bundle`: offline zip with wheels, runs, recipe and INSTALL.txt; installs with --no-index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hpasc import __version__
from hpasc.bundle import (
    KAGGLE_EXTRA_WHEELS,
    build_dependency_wheels,
    collect_run_files,
    dependency_list,
    make_bundle,
)
from hpasc.errors import ConfigError, InputError

NO_DEPS = list(KAGGLE_EXTRA_WHEELS)  # --without all of them: the bundle needs no network


def fake_run(root: Path) -> Path:
    for k in (0, 1):
        fold = root / f"fold-{k}"
        (fold / "logs").mkdir(parents=True)
        (fold / "config.yaml").write_text(f"fold_index: {k}\n")
        (fold / "last.ckpt").write_bytes(os.urandom(2000))
        (fold / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
        (fold / "logs" / "events.out.tfevents").write_bytes(b"tb")  # not for prediction
    return root


def tiny_wheel(folder: Path, name: str = "tinydep", version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            zf.writestr(arc, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{a},,\n" for a in files) + f"{info}/RECORD,,\n")
    return path


def test_dependency_list():
    assert dependency_list() == list(KAGGLE_EXTRA_WHEELS)
    assert dependency_list("none") == []
    assert dependency_list(without=NO_DEPS) == []
    got = dependency_list(with_=["pycocotools", "Typer==0.12.5"], without=["Shellingham"])
    assert "shellingham" not in got and got[-2:] == ["pycocotools", "Typer==0.12.5"]
    assert got.count("typer") == 0  # the specifier replaces the bare name
    with pytest.raises(ConfigError, match="not in the 'kaggle' list"):
        dependency_list(without=["numpy"])
    with pytest.raises(ConfigError, match="unknown wheel profile"):
        dependency_list("colab")
    with pytest.raises(ConfigError, match="always in the bundle"):
        dependency_list(with_=["hpasc"])


def test_collect_run_files(tmp_path):
    run = fake_run(tmp_path / "cam-b2")
    names = [p.as_posix() for p in collect_run_files(run)]
    assert names == [
        f"fold-{k}/{n}" for k in (0, 1) for n in ("config.yaml", "last.ckpt", "metrics.csv")
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        collect_run_files(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        collect_run_files(tmp_path / "nope")


def test_dependency_wheels_from_local_folder(tmp_path):
    links = tmp_path / "links"
    tiny_wheel(links)
    got = build_dependency_wheels(["tinydep"], tmp_path / "w", find_links=[links], no_index=True)
    assert [p.name for p in got] == ["tinydep-1.0-py3-none-any.whl"]
    with pytest.raises(InputError, match="nosuchpkg.*--without"):
        build_dependency_wheels(["nosuchpkg"], tmp_path / "w", find_links=[links], no_index=True)

    out = tmp_path / "b.zip"
    summary = make_bundle(
        out,
        [fake_run(tmp_path / "run")],
        with_=["tinydep"],
        without=NO_DEPS,
        find_links=[links],
        no_index=True,
    )
    assert summary.wheels[1:] == ["tinydep-1.0-py3-none-any.whl"]
    with zipfile.ZipFile(out) as zf:
        assert "wheels/tinydep-1.0-py3-none-any.whl" in zf.namelist()
        assert json.loads(zf.read("bundle.json"))["requested_dependencies"] == ["tinydep"]


def test_bundle_errors_leave_nothing(tmp_path):
    run = fake_run(tmp_path / "a" / "run")
    other = fake_run(tmp_path / "b" / "run")
    with pytest.raises(InputError, match="two runs are named 'run'"):
        make_bundle(tmp_path / "x.zip", [run, other], without=NO_DEPS)
    with pytest.raises(InputError, match="recipe not found"):
        make_bundle(tmp_path / "x.zip", [run], recipe=tmp_path / "r.yaml", without=NO_DEPS)
    with pytest.raises(InputError, match="pip could not make wheels"):
        make_bundle(tmp_path / "x.zip", [run], with_=["nosuchpkg"], without=NO_DEPS, no_index=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no zip, no temp file


@pytest.mark.slow  # a venv and two pip runs: 10 s on an idle 2-core machine, 20 s when busy
def test_bundle_installs_into_fresh_venv(tmp_path):
    run = fake_run(tmp_path / "cam-b2-768")
    recipe = tmp_path / "demo.yaml"
    recipe.write_text("steps: []\n")
    weights = tmp_path / "seg"
    weights.mkdir()
    (weights / "nuclei-model.pth").write_bytes(b"n" * 100)
    (weights / "cell-model.pth").write_bytes(b"c" * 100)

    from typer.testing import CliRunner

    from hpasc.cli import app

    out = tmp_path / "bundle.zip"
    args = ["bundle", str(out), "--runs", str(run), "--recipe", str(recipe)]
    args += ["--segmentation-weights", str(weights)]
    for name in NO_DEPS:
        args += ["--without", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 wheel(s), 1 run(s) with 6 file(s)" in result.output

    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "unpacked")
        install = zf.read("INSTALL.txt").decode()
    assert f"wheels/hpasc-{__version__}-py3-none-any.whl" in names
    assert {
        f"runs/cam-b2-768/fold-{k}/{n}" for k in (0, 1) for n in ("config.yaml", "last.ckpt")
    } <= names
    assert not [n for n in names if "tfevents" in n]
    assert {"recipe/demo.yaml", "weights/segmentation/cell-model.pth", "INSTALL.txt"} <= names
    assert "pip install --no-index --find-links wheels hpasc" in install
    assert "runs/cam-b2-768" in install and "weights/segmentation/nuclei-model.pth" in install
    assert (tmp_path / "unpacked/runs/cam-b2-768/fold-1/last.ckpt").read_bytes() == (
        run / "fold-1/last.ckpt"
    ).read_bytes()

    # A plain venv (no site packages of ours, no PYTHONPATH): hpasc from the bundle alone.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run(
        [
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            "wheels",
            "hpasc",
        ],
        cwd=tmp_path / "unpacked",
        env=env,
        check=True,
        timeout=120,
    )
    code = (
        "import importlib.util, hpasc;"
        "print(hpasc.__version__, hpasc.__file__, importlib.util.find_spec('numpy') is None)"
    )
    done = subprocess.run(
        [py, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    version, location, bare = done.stdout.split()
    assert version == __version__
    assert Path(location).is_relative_to(venv)  # the venv's copy, not our source tree
    assert bare == "True"  # no heavy deps there: hpasc's top-level import needs none
