"""Shared machinery of the bad-input suites (``tests/test_bad_inputs_*.py``).

A :class:`Case` is one bad command line: how to prepare its inputs, the argv, and the words the
single ``error:`` line must contain. :func:`check_case` runs it through the real CLI — in this
process (``hpasc.cli.main``, fast) or as a fresh process (``run_cli``, as a user would) — and
asserts what every user error must give: exit 2, exactly one ``error:`` line naming the file or
key, no traceback, and nothing left behind in the work folder (no output, no temp file).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conftest import run_cli

# names of files a writer may leave only while it runs (hpasc.io.store, hpasc.synth)
TEMP_MARKS = (".hpasc-tmp-", ".partial", ".tmp")


@dataclass
class Ctx:
    """Where a case runs: ``data`` (a shared synthetic data set, never written), ``work``
    (this case's own empty folder) and ``extra`` (paths a setup made)."""

    data: Path
    work: Path
    extra: dict[str, Path] = field(default_factory=dict)


@dataclass
class Case:
    """One bad input. ``argv(ctx)`` gives the command line, ``names(ctx)`` what the error line
    must contain; ``setup(ctx)`` prepares the inputs in ``ctx.work`` before the snapshot."""

    id: str
    argv: Callable[[Ctx], Sequence[object]]
    names: Callable[[Ctx], Sequence[str]]
    setup: Callable[[Ctx], None] | None = None
    rc: int = 2
    subprocess: bool = False  # also run it as a fresh process


def run_in_process(argv: Sequence[object]) -> tuple[int, str, str]:
    """``hpasc argv`` through :func:`hpasc.cli.main` in this process: (exit code, stdout, stderr)."""
    from hpasc.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return (
        (code if isinstance(code, int) else (0 if code is None else 1)),
        out.getvalue(),
        err.getvalue(),
    )


def run_subprocess(argv: Sequence[object], cwd: Path) -> tuple[int, str, str]:
    proc = run_cli(*argv, cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if any(m in p.name for m in TEMP_MARKS)]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def assert_one_error(rc: int, out: str, err: str, names: Sequence[str], expected_rc: int = 2):
    """Exit code, exactly one ``error:`` line containing every one of ``names``, no traceback."""
    assert rc == expected_rc, f"exit {rc}, expected {expected_rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, f"traceback in output:\n{out}\n{err}"
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one 'error:' line on stderr, got {lines}\n{err}"
    assert not error_lines(out), f"error line on stdout: {out}"
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def check_case(case: Case, ctx: Ctx, subprocess: bool = False) -> str:
    """Run ``case`` in ``ctx`` and assert the user-error contract; returns the error line."""
    if case.setup is not None:
        case.setup(ctx)
    before = snapshot(ctx.work)
    data_before = snapshot(ctx.data)
    argv = list(case.argv(ctx))
    if subprocess:
        rc, out, err = run_subprocess(argv, ctx.work)
    else:
        cwd = os.getcwd()
        os.chdir(ctx.work)  # relative paths of a case land in its own folder
        try:
            rc, out, err = run_in_process(argv)
        finally:
            os.chdir(cwd)
    line = assert_one_error(rc, out, err, case.names(ctx), case.rc)
    assert snapshot(ctx.work) == before, (
        f"partial output left: {sorted(snapshot(ctx.work) - before)}"
    )
    assert snapshot(ctx.data) == data_before, "the shared input data set was changed"
    assert not temp_files(ctx.work) and not temp_files(ctx.data)
    return line


def case_params(cases: Sequence[Case]):
    """``pytest.param`` objects of ``cases``, with their ids."""
    import pytest

    return [pytest.param(c, id=c.id) for c in cases]
