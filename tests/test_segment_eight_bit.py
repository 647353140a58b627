"""Segmentation reads 16-bit channels with the rule the user picks (issue 11 item 1.9): the
reference recipe's test masks read every PNG as ``cv2.imread(path, IMREAD_GRAYSCALE)``."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from hpasc.errors import InputError, OutputError
from hpasc.io.store import Store
from hpasc.pipeline.recipe import load_recipe
from hpasc.segment.sets import segment_set
from hpasc.synth import synthesize

CHANNELS = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="module")
def fields16(tmp_path_factory):
    """Two synthetic fields written as 16-bit PNGs whose low byte carries noise, and the 8-bit
    versions OpenCV's IMREAD_GRAYSCALE makes of them."""
    root = tmp_path_factory.mktemp("eight-bit")
    synthesize(root / "s", n_images=2, size=192, seed=5, progress=False)
    rng = np.random.default_rng(0)
    (root / "16").mkdir()
    (root / "8").mkdir()
    for png in sorted((root / "s" / "images").glob("*.png")):
        v8 = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        v16 = (v8.astype(np.uint32) * 257 + rng.integers(0, 200, v8.shape)).clip(0, 65535)
        cv2.imwrite(str(root / "16" / png.name), v16.astype(np.uint16))
        gray = cv2.imread(str(root / "16" / png.name), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "8" / png.name), gray)
    return root


def _masks(path):
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(path.glob("*.png"))}


def test_opencv_rule_segments_what_imread_grayscale_reads(fields16, tmp_path):
    segment_set(fields16 / "16", tmp_path / "opencv", eight_bit="opencv", progress=False)
    segment_set(fields16 / "8", tmp_path / "gray", progress=False)
    a, b = _masks(tmp_path / "opencv"), _masks(tmp_path / "gray")
    assert a and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_rule_is_recorded_and_another_rule_refuses(fields16, tmp_path):
    segment_set(fields16 / "16", tmp_path / "m", eight_bit="opencv", progress=False)
    with pytest.raises(OutputError, match="made with --eight-bit opencv"):
        segment_set(fields16 / "16", tmp_path / "m", eight_bit="ceil257", progress=False)


def test_unknown_rule_is_one_line(fields16, tmp_path):
    with pytest.raises(InputError, match="--eight-bit must be one of ceil257, opencv"):
        segment_set(fields16 / "16", tmp_path / "m", eight_bit="floor", progress=False)
    assert not (tmp_path / "m").exists()


def test_cli_flag_and_reference_recipe(fields16, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hpasc.cli", "segment", str(fields16 / "16"), str(tmp_path / "c"),
         "--eight-bit", "opencv"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Store(tmp_path / "c").list("*.png")
    recipe = load_recipe("configs/recipes/pfcell-2021.yaml")
    segments = [s for s in recipe.steps if s.kind == "segment"]
    assert segments and all(s.params.get("eight_bit") == "opencv" for s in segments)
