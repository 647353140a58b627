"""A fake SLURM for tests: ``sbatch``, ``sacct``, ``squeue``, ``srun``, ``scancel`` on ``PATH``.

:func:`install` writes one wrapper per command into a folder (to put first on ``PATH``); each
runs this file with the command's name. State lives in ``$FAKE_SLURM_DIR``:
``submissions.jsonl`` gets one JSON line per ``sbatch`` (job id, the script's ``#SBATCH`` options,
the ids of its ``afterok`` dependency), ``state/<id>`` holds each job's state. With
``FAKE_SLURM_RUN=1`` every submitted job also runs here, in the background: it waits until its
dependencies have COMPLETED (and is CANCELLED if one did not), then runs its script with the
``SLURM_*`` variables a one-task job sees.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "sacct", "squeue", "srun", "scancel")
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


def install(bin_dir: Path) -> None:
    """Write the wrappers into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {name} "$@"\n')
        wrapper.chmod(0o755)


def read_submissions(state_dir: Path) -> list[dict]:
    path = state_dir / "submissions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _state(job: str) -> str:
    path = _dir() / "state" / job
    return path.read_text().strip() if path.exists() else "UNKNOWN"


def _set_state(job: str, state: str) -> None:
    path = _dir() / "state" / job
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state)
    tmp.replace(path)


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    options: dict[str, str | bool] = {}
    for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M):
        options[m[1]] = m[2].strip("'\"") if m[2] is not None else True
    deps = []
    if "dependency" in options:
        kind, _, ids = str(options["dependency"]).partition(":")
        assert kind == "afterok", options["dependency"]
        deps = ids.split(":")
    state = _dir()
    state.mkdir(parents=True, exist_ok=True)
    counter = state / "next-id"
    job = str(int(counter.read_text()) if counter.exists() else 1001)
    counter.write_text(str(int(job) + 1))
    (state / "scripts").mkdir(exist_ok=True)
    (state / "scripts" / f"{job}.sh").write_text(text)
    with (state / "submissions.jsonl").open("a") as fh:
        fh.write(json.dumps({"job_id": job, "options": options, "afterok": deps}) + "\n")
    _set_state(job, "PENDING")
    if os.environ.get("FAKE_SLURM_RUN") == "1":
        subprocess.Popen(
            [sys.executable, __file__, "_run", job, *deps],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    print(f"Submitted batch job {job}")
    return 0


def _run(job: str, deps: list[str]) -> int:
    while True:
        states = [_state(d) for d in deps]
        if any(s in FINISHED and s != "COMPLETED" for s in states):
            _set_state(job, "CANCELLED")  # --kill-on-invalid-dep=yes
            return 0
        if all(s == "COMPLETED" for s in states):
            break
        time.sleep(0.2)
    if _state(job) == "CANCELLED":
        return 0
    _set_state(job, "RUNNING")
    env = dict(
        os.environ,
        SLURM_JOB_ID=job,
        SLURM_JOBID=job,
        SLURM_NTASKS="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_NAME="fake",
    )
    script = _dir() / "scripts" / f"{job}.sh"
    code = subprocess.run(["bash", str(script)], env=env).returncode
    _set_state(job, "COMPLETED" if code == 0 else "FAILED")
    return 0


def srun(args: list[str]) -> int:
    out = err = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("--output", "--error"):
            path = args[i + 1].replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0")
            out, err = (path, err) if args[i] == "--output" else (out, path)
            i += 2
        else:
            i += 1
    Path(out or os.devnull).parent.mkdir(parents=True, exist_ok=True)
    with open(out or os.devnull, "a") as o, open(err or os.devnull, "a") as e:
        return subprocess.run(args[i:], stdout=o, stderr=e).returncode


def sacct(args: list[str]) -> int:
    jobs = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job in jobs:
        print(f"{job}|{_state(job)}|localhost")
    return 0


def squeue(args: list[str]) -> int:
    print("JOBID STATE")
    for path in sorted((_dir() / "state").glob("*")):
        if path.read_text().strip() not in FINISHED:
            print(f"{path.name} {path.read_text().strip()}")
    return 0


def scancel(args: list[str]) -> int:
    for job in args:
        if job.isdigit() and _state(job) not in FINISHED:
            _set_state(job, "CANCELLED")
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "_run":
        sys.exit(_run(rest[0], rest[1:]))
    sys.exit(globals()[command](rest))
