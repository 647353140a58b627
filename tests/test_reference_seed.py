"""hpasc's resize, mask resize and crops against the 7th-place code's own outputs.

Vectors: ``../shared/vectors/seed/`` (made by running the original scripts; see its README):
``resize_image`` (cv2.imdecode IMREAD_GRAYSCALE, then ``cv2.resize`` with its default
INTER_LINEAR), ``resize_cell_mask`` (INTER_NEAREST_EXACT) and the crop worker on the 768-px
field. Everything goes through the CLI, as a user runs it, and must match byte for byte.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from hpasc.io.images import read_field, read_mask
from hpasc.io.store import Store
from hpasc.prepare import read_crops

FIELD = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
SEED = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "seed"


@pytest.fixture(scope="module")
def vectors():
    if not SEED.is_dir():
        pytest.fail(f"reference vectors missing: {SEED} (CI lays ../shared beside the checkout)")
    return np.load(SEED / "resize-5c27f04c.npz"), np.load(SEED / "crops-5c27f04c.npz")


@pytest.fixture(scope="module")
def resized(tmp_path_factory, hpa_real):
    """The reference recipe's resize settings, through `hpasc resize`, at 768 and 1536."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("seed")
    images = hpa_real / "kaggle-train" / "images"
    for size in (768, 1536):
        run_cli(
            "resize", images, tmp / f"img-{size}", "--size", size, "--interpolation", "linear",
            "--dtype", "uint8", "--eight-bit", "opencv", check=True,
        )  # fmt: skip
    run_cli(
        "resize", hpa_real / "kaggle-train" / "masks", tmp / "mask-768", "--size", 768, "--masks",
        check=True,
    )  # fmt: skip
    return tmp


def test_linear_resize_equals_the_reference_byte_for_byte(resized, vectors):
    ref, _ = vectors
    for size in (768, 1536):
        green = read_field(Store(resized / f"img-{size}"), FIELD)[..., 1]
        assert green.dtype == np.uint8
        assert np.array_equal(green, ref[f"green_{size}"]), size


def test_default_resize_is_area_and_differs_from_the_reference(hpa_real, vectors, cli, tmp_path):
    """`auto` (hpasc's default) averages areas when shrinking: not the reference's bilinear."""
    ref, _ = vectors
    r = cli("resize", hpa_real / "kaggle-train" / "images", tmp_path, "--size", 768)
    assert r.returncode == 0, r.stderr
    green = read_field(Store(tmp_path), FIELD)[..., 1].astype(np.float64)
    diff = np.abs(green - ref["green_768"]).mean()
    assert 0.2 < diff < 0.6  # 0.39 grey levels on average


def test_mask_resize_equals_the_reference(resized, vectors):
    ref, _ = vectors
    mask = read_mask(Store(resized / "mask-768"), FIELD)
    assert np.array_equal(mask, ref["mask_768"].astype(np.uint16))


def test_crops_of_the_reference_resize_equal_the_reference(resized, vectors, cli):
    """resize → crop, as the recipe chains them: the 8 planes of every cell are the original's."""
    _, ref = vectors
    field = read_field(Store(resized / "img-768"), FIELD)
    assert np.array_equal(field.transpose(2, 0, 1), ref["rgby_768"])
    out = resized / "crops"
    r = cli("crop", resized / "img-768", resized / "mask-768", out, "--size", 192)
    assert r.returncode == 0, r.stderr
    crops, ids = read_crops(str(out), FIELD)
    assert np.array_equal(ids, ref["instance_indices"])
    assert crops.dtype == np.uint8 and np.array_equal(crops, ref["cell_images"])


def test_opencv_eight_bit_rule_equals_imread_grayscale(hpa_real, tmp_path):
    """`eight_bit="opencv"` on a 16-bit PNG (and the same pixels as HPA's gzip TIFF) is exactly
    ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``; the default keeps ceil(v/257)."""
    from hpasc.io.images import to_uint8

    bits = hpa_real / "bit-depth"
    expected = cv2.imread(str(bits / "383_D2_1_blue.16bit.png"), cv2.IMREAD_GRAYSCALE)
    for ext in ("png", "tif.gz"):
        src = bits / ("383_D2_1_blue.16bit.png" if ext == "png" else "383_D2_1_blue.tif.gz")
        d = tmp_path / ext
        d.mkdir()
        for ch in ("red", "green", "blue", "yellow"):
            (d / f"f_{ch}.{ext}").write_bytes(src.read_bytes())
        opencv = read_field(Store(d), "f", eight_bit="opencv")
        assert opencv.dtype == np.uint8
        assert np.array_equal(opencv[..., 2], expected), ext
        default = read_field(Store(d), "f", dtype="uint8")
        assert np.array_equal(default[..., 2], to_uint8(read_field(Store(d), "f")[..., 2]))
        assert not np.array_equal(default[..., 2], expected)  # the two rules differ
