"""The lock files decide the installed versions; pyproject.toml only declares ranges."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_declared_dependency_is_locked_within_its_range():
    locked = _pins(ROOT / "requirements-all.lock")
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in the lock: run make lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"lock has {req.name}=={locked[name]}, outside {req.specifier}: run make lock"
        )


def test_dev_lock_is_the_same_versions_as_the_full_lock():
    dev, full = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-all.lock")
    assert dev, "requirements.lock is empty"
    assert {k: full.get(k) for k in dev} == dev


def test_torch_pin_is_in_the_lock():
    locked = _pins(ROOT / "requirements.lock")
    for req in (
        Requirement(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ):
        assert locked[canonicalize_name(req.name)] in req.specifier


def test_installed_versions_are_the_locked_ones():
    """A newer library must not change behaviour behind the tests' back."""
    wrong = []
    for name, version in _pins(ROOT / "requirements.lock").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} (locked {version}, not installed)")
            continue
        if installed.split("+")[0] != version.split("+")[0]:
            wrong.append(f"{name} {installed} (locked {version})")
    assert not wrong, "environment differs from requirements.lock (make install): " + ", ".join(
        wrong
    )
