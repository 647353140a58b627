"""Stage options are declared once: the CLI flags, the recipe step kinds and the library
functions all take their defaults, ranges and choices from one frozen dataclass."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bad_inputs import assert_one_error, run_in_process
from hpasc.commands import APP_SETTINGS
from hpasc.commands._options import with_options
from hpasc.errors import ConfigError, InputError, OptionError
from hpasc.options import from_mapping, option, recorded, validate
from hpasc.pipeline.recipe import STEP_KINDS, StepFailed, load_recipe, run_recipe
from hpasc.pipeline.steps import load_options, step_kind
from hpasc.prepare import CropOptions, ResizeOptions
from hpasc.submission import SubmitOptions, write_submission

ROOT = Path(__file__).resolve().parents[1]
SUBMIT_PATHS = {"masks": "m", "predictions": "p"}


def _help_default(help_text: str, flag: str) -> str:
    """The ``[default: X]`` shown for ``flag`` in a command's ``--help``."""
    text = " ".join(help_text.split())
    found = re.search(re.escape(flag) + r" <\w+>[^\[]*\[default: ([^\];]+)", text)
    assert found, f"{flag} has no default in the help:\n{help_text}"
    return found.group(1)


def _three_readings() -> tuple[str, float, float]:
    """The submit edge threshold as the CLI help, the step kind and the signature give it."""
    rc, out, err = run_in_process(["submit", "--help"])
    assert rc == 0, err
    step = load_options(STEP_KINDS["submit"], SUBMIT_PATHS, "sub").edge_area_threshold
    signature = inspect.signature(write_submission).parameters["options"].default
    return _help_default(out, "--edge-area-threshold"), step, signature.edge_area_threshold


def test_cli_step_kind_and_signature_read_the_submit_threshold_from_one_field():
    field = {f.name: f for f in dataclasses.fields(SubmitOptions)}["edge_area_threshold"]
    shown, step, signature = _three_readings()
    assert float(shown) == step == signature == field.default == 80_000.0


_READ_ALL = """
import inspect, json, io, contextlib
from hpasc.cli import main
from hpasc.pipeline.recipe import STEP_KINDS
from hpasc.pipeline.steps import load_options
from hpasc.submission import write_submission
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["submit", "--help"])
    except SystemExit:
        pass
step = load_options(STEP_KINDS["submit"], {"masks": "m", "predictions": "p"}, "s")
default = inspect.signature(write_submission).parameters["options"].default
print(json.dumps({"help": out.getvalue(), "step": step.edge_area_threshold,
                  "signature": default.edge_area_threshold}))
"""


def test_changing_the_default_is_a_one_line_change(tmp_path):
    """Edit one line of a copy of the sources: the help, the step kind and the signature follow."""
    shutil.copytree(ROOT / "src" / "hpasc", tmp_path / "hpasc")
    source = tmp_path / "hpasc" / "submission.py"
    lines = source.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "edge_area_threshold: float" in line)
    at = next(i for i in range(start, start + 3) if "80_000.0" in lines[i])
    lines[at] = lines[at].replace("80_000.0", "12_345.0")
    source.write_text("".join(lines))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ALL], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert float(_help_default(got["help"], "--edge-area-threshold")) == 12_345.0
    assert got["step"] == got["signature"] == 12_345.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class _OtherSubmit(SubmitOptions):
    edge_area_threshold: float = option(4_321.0, "Another edge threshold.")


@step_kind("toy-other-submit", paths=("masks", "predictions"), options=_OtherSubmit)
def _toy_other_submit(own, options, ctx):
    (ctx.out / "t.json").write_text(json.dumps(dataclasses.asdict(options)))


def test_another_default_reaches_the_cli_and_the_step_kind(tmp_path):
    @with_options()
    def cmd(*, options: _OtherSubmit) -> None:
        typer.echo(f"T={options.edge_area_threshold} C={options.center_area_threshold}")

    app = typer.Typer(**APP_SETTINGS)  # hpasc's own: plain-text help
    app.command()(cmd)
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and _help_default(result.output, "--edge-area-threshold") == (
        "4321.0"
    )
    run = CliRunner().invoke(app, [])
    assert run.output.strip() == "T=4321.0 C=32000.0"  # inherited fields keep theirs
    assert CliRunner().invoke(app, ["--edge-area-threshold", "7"]).output.startswith("T=7.0")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - {name: s, kind: toy-other-submit, masks: m, predictions: p}\n")
    run_recipe(load_recipe(recipe, work=tmp_path / "w"), echo=lambda s: None)
    written = json.loads((tmp_path / "w" / "s" / "t.json").read_text())
    assert written["edge_area_threshold"] == 4321.0 and written["center_area_threshold"] == 32000.0


def test_from_mapping_errors_name_the_step_and_the_key():
    with pytest.raises(
        ConfigError, match=r"^step 'sub': unknown key 'edge_threshold'; did you mean"
    ):
        load_options(STEP_KINDS["submit"], {**SUBMIT_PATHS, "edge_threshold": 1}, "sub")
    with pytest.raises(ConfigError) as bad_type:
        load_options(STEP_KINDS["submit"], {**SUBMIT_PATHS, "edge_area_threshold": "lots"}, "sub")
    message = str(bad_type.value)
    assert "\n" not in message
    assert message.startswith("step 'sub': key 'edge_area_threshold': ") and "'lots'" in message
    with pytest.raises(ConfigError, match=r"step 'r': missing key\(s\) \['size'\]"):
        from_mapping(ResizeOptions, {}, "step 'r'")
    with pytest.raises(ConfigError, match=r"step 'r': --size must be >= 1, got 0 \(key size\)"):
        from_mapping(ResizeOptions, {"size": 0}, "step 'r'")
    # YAML strings convert as OmegaConf converts them
    assert from_mapping(ResizeOptions, {"size": "64"}, "step 'r'").size == 64


def test_a_recipe_step_with_a_wrong_type_fails_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {name: sub, kind: submit, masks: m, predictions: p, min_confidence: high}\n"
    )
    with pytest.raises(StepFailed) as failed:
        run_recipe(load_recipe(recipe, work=tmp_path / "w"), echo=lambda s: None)
    message = str(failed.value)
    assert "\n" not in message and "step 'sub'" in message and "'min_confidence'" in message


def test_validate_checks_ranges_and_choices():
    with pytest.raises(OptionError, match=r"--min-confidence must be in \[0.0, 1.0\], got 2"):
        SubmitOptions(min_confidence=2)
    with pytest.raises(InputError, match="--interpolation must be one of auto, area"):
        ResizeOptions(size=8, interpolation="bicubic")
    with pytest.raises(ValueError, match="--size must be >= 2"):  # an OptionError is both
        CropOptions(size=1)

    @dataclasses.dataclass(frozen=True)
    class Listed:
        weights: list[float] | None = option(None, "w", min=0.0)

    with pytest.raises(OptionError, match="--weights must be >= 0.0, got -1"):
        validate(Listed(weights=[1.0, -1.0]))
    validate(Listed(weights=[1.0, 2.0]))


def test_an_out_of_range_option_is_a_one_line_usage_error():
    argv = ["submit", "--masks", "m", "--predictions", "p", "-o", "o", "--min-confidence", "1.5"]
    rc, out, err = run_in_process(argv)
    assert_one_error(rc, out, err, ["--min-confidence", "(valid: [0.0, 1.0])"])
    rc, out, err = run_in_process(["cells", "average", "a.parquet", "-o", "o", "--weights", "1,x"])
    assert_one_error(rc, out, err, ["--weights '1,x'", "comma-separated"])


def test_recorded_options_and_path_keys():
    """What an output records leaves out how it ran (workers); path fields are step path keys."""
    assert recorded(ResizeOptions(size=64, workers=4)) == {
        "size": 64,
        "interpolation": "auto",
        "dtype": None,
        "eight_bit": "ceil257",
    }
    assert recorded(CropOptions(size=32, orig_masks="x", workers=2)) == {"size": 32}
    crop = STEP_KINDS["crop"]
    assert {"images", "masks", "orig_masks", "out"} <= crop.paths and crop.outputs == {"out"}
    segment = STEP_KINDS["segment"]
    assert "nuclei_out" in segment.outputs and "method_options.cell_model" in segment.paths
