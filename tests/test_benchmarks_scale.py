"""benchmarks/scale.py (its projection, one stage measured in a child) and gpu.sh --smoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import scale  # noqa: E402 - benchmarks are scripts, not a package


def _env() -> dict:
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")])
    )


def test_projection_adds_the_stages_of_each_part():
    unit = {
        stage: {s: {"seconds": 1.0, "peak_mib": 1.0} for s in (1536, 1728, 2048, 3072)}
        for stage in scale.STAGES
    }
    parts = scale.projection(unit, "hpa-unet")
    # train: 2 resizes + segment + half a mask resize + 2 crops; public: 1 + 1 + 0.5 + 2;
    # test: 2 resizes + segment + mask resizes + 2 crops + cell table
    assert parts["Kaggle train"] == pytest.approx(scale.KAGGLE_TRAIN * 5.5)
    assert parts["public HPA"] == pytest.approx(scale.PUBLIC_HPA * 4.5)
    assert parts["test"] == pytest.approx(scale.TEST * 7.0)
    slow = {k: {s: dict(v) for s, v in d.items()} for k, d in unit.items()}
    slow["segment-hpa-unet-train"][1536]["seconds"] = 11.0
    assert scale.projection(slow, "hpa-unet")["public HPA"] == pytest.approx(
        scale.PUBLIC_HPA * 14.5
    )
    assert scale.projection(slow, "classical")["public HPA"] == pytest.approx(
        scale.PUBLIC_HPA * 4.5
    )


def test_a_stage_is_measured_in_its_own_process():
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "scale.py"),
        "--child",
        "crop-768",
        "--sides",
        "256",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["stage"] == "crop-768" and row["side"] == 256
    assert 0 < row["seconds"] < 30 and row["peak_mib"] >= row["before_mib"] > 0


@pytest.mark.slow
def test_gpu_script_smoke_mode_prints_the_table():
    env = dict(_env(), PYTHON=sys.executable)
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].startswith("device: CPU") and "SMOKE" in lines[0]
    table = "\n".join(lines)
    for row in (
        "fp32",
        "bf16",
        "(cells)",
        "hpa-unet, both nets",
        "test ensemble",
        "559 test fields",
    ):
        assert row in table
    assert table.count("images/s") == 4 and table.count("fields/s") == 3
