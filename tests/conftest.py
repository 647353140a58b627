import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HPA_REAL = SHARED / "data" / "hpa-real"


@pytest.fixture(scope="session")
def hpa_real() -> Path:
    if not HPA_REAL.is_dir():
        pytest.fail(
            f"real HPA fixtures missing: {HPA_REAL} (CI lays ../shared beside the checkout)"
        )
    return HPA_REAL


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: float = 600):
    """Run the installed CLI as a user would (a fresh process)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "hpasc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hpasc {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def cli():
    return run_cli


_MEASUREMENTS: list[str] = []


def failing_recipe(folder: Path, independent_step: str) -> Path:
    """A recipe whose ``folds`` step fails (too few labels for 3 folds), two steps that need it
    (``after``, ``later``) and one that does not (``independent_step``, a YAML flow mapping)."""
    (folder / "labels.csv").write_text("ID,Label\nf0,0\n")
    recipe = folder / "r.yaml"
    recipe.write_text(
        "steps:\n"
        "  - {name: folds, kind: folds, labels: '${data}/labels.csv', n_folds: 3}\n"
        "  - {name: after, kind: group, needs: [folds]}\n"
        "  - {name: later, kind: group, needs: [after]}\n"
        f"  - {independent_step}\n"
    )
    return recipe


@pytest.fixture
def report_metric():
    """Record a measured number (e.g. segmentation F1) to print in the summary of every test run."""
    return _MEASUREMENTS.append


def pytest_terminal_summary(terminalreporter):
    if _MEASUREMENTS:
        terminalreporter.section("hpasc measurements")
        for line in _MEASUREMENTS:
            terminalreporter.write_line(line)
