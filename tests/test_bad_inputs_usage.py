"""Usage errors: one ``error:`` line and exit 2 for every command, whatever click Typer uses.

The commands are walked from the CLI's command table (``hpasc.cli.COMMANDS``), so a new command
or option is covered without editing this file: ``--help`` must render, an unknown option and a missing argument
must be one line, and every numeric option must have bounds that reject a value below them.
"""

from __future__ import annotations

import inspect
import typing

import pytest

from bad_inputs import assert_one_error, run_in_process, run_subprocess
from hpasc.cli import COMMANDS as TABLE
from hpasc.cli import resolve

COMMANDS = {(*filter(None, [c.group]), c.name): resolve(c.target) for c in TABLE}
GROUPS = sorted({path[:-1] for path in COMMANDS if len(path) > 1})


def _ids(paths):
    return [" ".join(p) for p in paths]


def _options(callback):
    """(name, typer Option/Argument info, annotation) of a command's parameters."""
    hints = typing.get_type_hints(callback)
    for name, par in inspect.signature(callback).parameters.items():
        yield name, par.default, hints.get(name)


def _flag(name: str, info) -> str:
    decls = [d for d in (getattr(info, "param_decls", None) or ()) if d.startswith("--")]
    return decls[0].split("/")[0] if decls else "--" + name.replace("_", "-")


def _is_option(info) -> bool:
    return type(info).__name__ == "OptionInfo"


def _required_params(callback) -> bool:
    return any(getattr(info, "default", None) is ... for _, info, _ in _options(callback))


NUMERIC = [
    (path, _flag(name, info), info, tp)
    for path, callback in COMMANDS.items()
    for name, info, tp in _options(callback)
    if _is_option(info) and tp in (int, float, int | None, float | None)
]
# numeric options whose every value means something, or that a command checks itself
UNBOUNDED = {
    ("synth", "--bit-depth"): "a choice (8 or 16), checked by the command",
    ("submit", "--edge-area-threshold"): "any number: T <= 0 turns the scaling off",
    ("submit", "--center-area-threshold"): "any number: T <= 0 turns the scaling off",
    ("evaluate", "--iou"): "an open interval (0, 1], checked by the command",
}
BOUNDED = [
    (path, flag, info, tp)
    for path, flag, info, tp in NUMERIC
    if (" ".join(path), flag) not in UNBOUNDED
]


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p in COMMANDS}
    assert {
        "synth",
        "resize",
        "train image-level",
        "predict cell-level",
        "weights download",
    } <= names
    assert len(COMMANDS) >= 20 and ("train",) in GROUPS


@pytest.mark.parametrize(
    "path", [(), *GROUPS, *COMMANDS], ids=_ids([("hpasc",), *GROUPS, *COMMANDS])
)
def test_help_of_every_command_renders(path):
    rc, out, err = run_in_process([*path, "--help"])
    assert rc == 0, err
    assert "Usage: hpasc" in out and "Traceback" not in out + err
    assert "-h, --help" in out  # the options table rendered to its end


@pytest.mark.parametrize("path", COMMANDS, ids=_ids(COMMANDS))
def test_unknown_option_is_one_line(path):
    rc, out, err = run_in_process([*path, "--no-such-option"])
    assert_one_error(rc, out, err, ["hpasc " + " ".join(path), "--no-such-option"])


REQUIRED = [p for p, cb in COMMANDS.items() if _required_params(cb)]


@pytest.mark.parametrize("path", REQUIRED, ids=_ids(REQUIRED))
def test_missing_argument_is_one_line(path):
    rc, out, err = run_in_process(list(path))
    assert_one_error(rc, out, err, ["hpasc " + " ".join(path), "Missing"])


@pytest.mark.parametrize(
    "path, flag, info, tp", NUMERIC, ids=[f"{' '.join(p)} {f}" for p, f, _, _ in NUMERIC]
)
def test_non_numeric_value_is_one_line(path, flag, info, tp):
    rc, out, err = run_in_process([*path, flag, "many"])
    assert_one_error(rc, out, err, [flag])


@pytest.mark.parametrize(
    "path, flag, info, tp", BOUNDED, ids=[f"{' '.join(p)} {f}" for p, f, _, _ in BOUNDED]
)
def test_numeric_option_below_its_minimum_is_one_line_with_the_range(path, flag, info, tp):
    low = getattr(info, "min", None)
    assert low is not None, (
        f"hpasc {' '.join(path)} {flag} takes any number: give it min= (or list it in UNBOUNDED "
        "with the reason)"
    )
    value = low - 1 if tp in (int, int | None) else low - 0.5
    rc, out, err = run_in_process([*path, flag, str(value)])
    line = assert_one_error(rc, out, err, [flag, "valid:"])
    assert str(low) in line


def test_unknown_command_is_one_line():
    rc, out, err = run_in_process(["frobnicate"])
    assert_one_error(rc, out, err, ["No such command", "frobnicate"])


@pytest.mark.parametrize("path", [(), *GROUPS], ids=_ids([("hpasc",), *GROUPS]))
def test_no_command_prints_help_and_exits_2(path):
    rc, out, err = run_in_process(list(path))
    assert rc == 2 and "Usage: hpasc" in out and "Commands:" in out
    assert not err.strip() and "Traceback" not in out


def test_exit_codes_are_documented_in_the_help():
    rc, out, _ = run_in_process(["--help"])
    assert rc == 0 and "Exit codes:" in out and "2 a usage" in " ".join(out.split())


def test_real_click_exceptions_are_one_line_too(monkeypatch):
    """Typer versions in range raise either its vendored click's classes or the real click's."""
    click = pytest.importorskip("click", reason="the real click package is not installed")
    import hpasc.cli

    def raising(exc):
        def fake_app(**_):
            raise exc

        return fake_app

    cases = [
        (click.BadParameter("must be 8 or 16", param_hint="'--bit-depth'"), "--bit-depth"),
        (click.UsageError("No such command 'frobnicate'."), "frobnicate"),
        (click.exceptions.NoSuchOption("--bogus"), "--bogus"),
    ]
    for exc, name in cases:
        monkeypatch.setattr(hpasc.cli, "app", raising(exc))
        rc, out, err = run_in_process(["x"])
        assert_one_error(rc, out, err, [name])
    monkeypatch.setattr(hpasc.cli, "app", raising(click.exceptions.Exit(0)))
    assert run_in_process(["x"])[0] == 0
    monkeypatch.setattr(hpasc.cli, "app", raising(click.exceptions.Abort()))
    rc, _, err = run_in_process(["x"])
    assert rc == 1 and error_line_count(err) == 1


def error_line_count(text: str) -> int:
    return sum(line.startswith("error:") for line in text.splitlines())


# The README's promises, as a user types them: fresh processes.
SUBPROCESS_CASES = [
    (["synth", "out/x", "--size", "64"], 2, ["--size", "128"]),
    (["frobnicate"], 2, ["frobnicate"]),
    (["resize", "--size", "abc", "a", "b"], 2, ["--size"]),
    (["crop", "--bogus"], 2, ["--bogus"]),
    (["train", "image-level"], 2, ["Missing"]),
]


@pytest.mark.parametrize(
    "argv, rc, names", SUBPROCESS_CASES, ids=[" ".join(c[0]) for c in SUBPROCESS_CASES]
)
def test_usage_errors_in_a_fresh_process(argv, rc, names, tmp_path):
    code, out, err = run_subprocess(argv, tmp_path)
    assert_one_error(code, out, err, names, rc)
    assert not any(tmp_path.iterdir()), "a usage error created output"


def test_help_and_no_command_in_a_fresh_process(tmp_path):
    code, out, err = run_subprocess(["resize", "--help"], tmp_path)
    assert code == 0 and "Usage: hpasc resize" in out and "x.zip[/sub]" in out and not err
    code, out, err = run_subprocess([], tmp_path)
    assert code == 2 and "Usage: hpasc" in out and "Traceback" not in err


@pytest.mark.parametrize(
    "exc, names",
    [
        (PermissionError(13, "Permission denied", "/data/out"), ["/data/out", "permissions"]),
        (OSError(30, "Read-only file system", "/mnt/ro/x"), ["/mnt/ro/x", "read-only"]),
        (OSError(28, "No space left on device"), ["No space left", "free some space"]),
        (ConnectionRefusedError(111, "Connection refused"), ["Connection refused", "URL"]),
    ],
    ids=["EACCES", "EROFS", "ENOSPC", "ECONNREFUSED"],
)
def test_environment_oserrors_are_one_line(monkeypatch, exc, names):
    import hpasc.cli

    def fake_app(**_):
        raise exc

    monkeypatch.setattr(hpasc.cli, "app", fake_app)
    rc, out, err = run_in_process(["x"])
    assert_one_error(rc, out, err, names)


def test_other_oserrors_keep_their_traceback(monkeypatch):
    """An OSError the environment did not cause is a bug: it is not dressed up as a user error."""
    import hpasc.cli

    def fake_app(**_):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(hpasc.cli, "app", fake_app)
    with pytest.raises(OSError, match="Bad file descriptor"):
        hpasc.cli.main(["x"])
