import gzip
import io

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from hpasc.errors import InputError
from hpasc.io import images as im
from hpasc.io.store import Store

KAGGLE_ID = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
PUBLIC_ID = "57_F11_1"
# Measured on public-hpa: |colour-file component - grayscale file|, max and share exact.
# docs/io.md reports these numbers.
RGB_MAX_DIFF = {"red": 56, "green": 49, "blue": 48, "yellow": 15}
RGB_MIN_EXACT = {"red": 0.79, "green": 0.78, "blue": 0.90, "yellow": 0.93}


def pil_array(path) -> np.ndarray:
    """Decode with Pillow: an independent reference for OpenCV-based reading."""
    with Image.open(path) as img:
        return np.array(img)


def test_kaggle_2048_field(hpa_real):
    store = Store(hpa_real / "kaggle-train" / "images")
    assert im.list_field_ids(store) == [KAGGLE_ID]
    assert im.field_files(store, KAGGLE_ID) == {c: f"{KAGGLE_ID}_{c}.png" for c in im.CHANNELS}
    field = im.read_field(store, KAGGLE_ID)
    assert field.shape == (2048, 2048, 4) and field.dtype == np.uint8
    for i, channel in enumerate(im.CHANNELS):  # R, G, B, Y order
        expected = pil_array(hpa_real / "kaggle-train" / "images" / f"{KAGGLE_ID}_{channel}.png")
        np.testing.assert_array_equal(field[..., i], expected)
    np.testing.assert_array_equal(im.read_channel(store, KAGGLE_ID, "yellow"), field[..., 3])


def test_public_1728_field(hpa_real):
    store = Store(hpa_real / "public-hpa" / "images")
    field = im.read_field(store, PUBLIC_ID)
    assert field.shape == (1728, 1728, 4) and field.dtype == np.uint8
    for i, channel in enumerate(im.CHANNELS):
        expected = pil_array(hpa_real / "public-hpa" / "images" / f"{PUBLIC_ID}_{channel}.png")
        np.testing.assert_array_equal(field[..., i], expected)


def test_rgb_colour_files_match_grayscale(hpa_real):
    colour = Store(hpa_real / "public-hpa" / "rgb-colour")
    gray = im.read_field(Store(hpa_real / "public-hpa" / "images"), PUBLIC_ID).astype(int)
    field = im.read_field(colour, PUBLIC_ID)
    assert field.shape == (1728, 1728, 4) and field.dtype == np.uint8
    for i, channel in enumerate(im.CHANNELS):
        diff = np.abs(field[..., i].astype(int) - gray[..., i])
        assert diff.max() <= RGB_MAX_DIFF[channel], channel
        assert (diff == 0).mean() >= RGB_MIN_EXACT[channel], channel
        assert diff.mean() < 0.6, channel
    # yellow is stored as R+G: R alone reproduces it better than the mean or max of R and G
    rgb = pil_array(hpa_real / "public-hpa" / "rgb-colour" / f"{PUBLIC_ID}_yellow.png")
    r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
    err = {
        "R": np.abs(r - gray[..., 3]).mean(),
        "mean": np.abs((r + g) / 2 - gray[..., 3]).mean(),
        "max": np.abs(np.maximum(r, g) - gray[..., 3]).mean(),
    }
    assert min(err, key=err.get) == "R"


def test_16bit_png_tif_gz_and_8bit(hpa_real):
    bit = hpa_real / "bit-depth"
    png16 = im.decode_image((bit / "383_D2_1_blue.16bit.png").read_bytes(), "a.png")
    tif = im.decode_image((bit / "383_D2_1_blue.tif.gz").read_bytes(), "a.tif.gz")
    png8 = im.decode_image((bit / "383_D2_1_blue.8bit.png").read_bytes(), "a.png")
    assert png16.dtype == tif.dtype == np.uint16 and png8.dtype == np.uint8
    assert png16.shape == (2048, 2048)
    np.testing.assert_array_equal(png16, pil_array(bit / "383_D2_1_blue.16bit.png"))
    np.testing.assert_array_equal(tif, png16)
    green = im.decode_image((bit / "1000_A12_2_green.16bit.png").read_bytes(), "g.png")
    assert green.dtype == np.uint16 and green.shape == (2048, 2048) and green.max() == 65089


def test_to_uint8_reproduces_shipped_8bit(hpa_real):
    bit = hpa_real / "bit-depth"
    v = im.decode_image((bit / "383_D2_1_blue.16bit.png").read_bytes(), "a.png")
    shipped = im.decode_image((bit / "383_D2_1_blue.8bit.png").read_bytes(), "a.png")
    ours = im.to_uint8(v)
    assert ours.dtype == np.uint8
    # ceil(v/257) matches every pixel; the usual rules do not (docs/io.md)
    np.testing.assert_array_equal(ours, shipped)
    assert (np.round(v / 257).astype(np.uint8) == shipped).mean() < 0.93
    assert ((v >> 8).astype(np.uint8) == shipped).mean() < 0.91
    # read through a store under channel-file names, converted on read
    store = Store("memory://images-bitdepth/set")
    store.write_bytes("383_D2_1_blue.tif.gz", (bit / "383_D2_1_blue.tif.gz").read_bytes())
    np.testing.assert_array_equal(im.read_channel(store, "383_D2_1", "blue", "uint8"), shipped)
    np.testing.assert_array_equal(im.read_channel(store, "383_D2_1", "blue"), v)


def test_to_uint8_and_to_uint16_rules():
    v = np.array([0, 1, 257, 258, 514, 515, 65278, 65279, 65535], np.uint16)
    np.testing.assert_array_equal(im.to_uint8(v), [0, 1, 1, 2, 2, 3, 254, 255, 255])
    a = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(im.to_uint8(im.to_uint16(a)), a)
    assert im.to_uint16(a)[-1] == 65535
    with pytest.raises(ValueError):
        im.to_uint8(np.zeros(3, np.float32))


def test_other_file_forms(tmp_path):
    rng = np.random.default_rng(0)
    img16 = rng.integers(0, 65536, (40, 56), dtype=np.uint16)
    img8 = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    store = Store(tmp_path / "forms")
    buf = io.BytesIO()
    tifffile.imwrite(buf, img16)
    store.write_bytes("f_red.tif", buf.getvalue())
    store.write_bytes("f_green.tiff.gz", gzip.compress(buf.getvalue()))
    smooth = cv2.GaussianBlur(img8, (0, 0), 3)
    ok, jpg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 95])
    store.write_bytes("f_blue.jpg", jpg.tobytes())
    gray_as_rgb = np.repeat(img8[..., None], 3, axis=2)  # grayscale saved as RGB
    store.write_bytes("f_yellow.png", im.encode_png(gray_as_rgb))
    assert im.list_field_ids(store) == ["f"]
    field = im.read_field(store, "f")
    assert field.dtype == np.uint16  # 8-bit channels promoted (v*257) next to 16-bit ones
    np.testing.assert_array_equal(field[..., 0], img16)
    np.testing.assert_array_equal(field[..., 1], img16)
    assert np.abs(im.to_uint8(field[..., 2]).astype(int) - smooth).max() <= 8
    np.testing.assert_array_equal(field[..., 3], img8.astype(np.uint16) * 257)
    np.testing.assert_array_equal(im.read_field(store, "f", "uint8")[..., 3], img8)


def test_colour_decoding_picks_the_named_component():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    data = im.encode_png(rgb)
    assert im.decode_image(data, "x_red.png")[0, 0] == 10
    assert im.decode_image(data, "x_green.png")[0, 0] == 20
    assert im.decode_image(data, "x_blue.png")[0, 0] == 30
    assert im.decode_image(data, "x_yellow.png")[0, 0] == 10
    assert im.decode_image(data, "whatever.png", channel="blue")[0, 0] == 30
    with pytest.raises(InputError, match="channel is unknown"):
        im.decode_image(data, "whatever.png")


def test_corrupt_and_unknown_files():
    with pytest.raises(InputError, match="not a readable PNG"):
        im.decode_image(b"garbage", "x_red.png")
    with pytest.raises(InputError, match="gzip"):
        im.decode_image(b"garbage", "x_red.tif.gz")
    with pytest.raises(InputError, match="TIFF"):
        im.decode_image(b"garbage", "x_red.tif")
    with pytest.raises(InputError, match="unknown image type"):
        im.decode_image(b"garbage", "x_red.bmp")


def test_missing_channel_names_the_missing_files(tmp_path):
    store = Store(tmp_path / "set")
    im.write_channel(store, "f1", "red", np.zeros((8, 8), np.uint8))
    im.write_channel(store, "f1", "blue", np.zeros((8, 8), np.uint8))
    assert im.list_field_ids(store) == ["f1"]
    with pytest.raises(InputError) as err:
        im.read_field(store, "f1")
    msg = str(err.value)
    assert "f1_green.png" in msg and "f1_yellow.png" in msg and str(tmp_path) in msg
    assert "f1_red" not in msg and "f1_blue" not in msg
    with pytest.raises(InputError, match="f1_green"):
        im.read_channel(store, "f1", "green")
    with pytest.raises(InputError, match="f1_yellow"):
        im.field_files(store, "f1")


def test_size_mismatch_error(tmp_path):
    store = Store(tmp_path / "set")
    for channel in im.CHANNELS:
        size = (64, 48) if channel == "green" else (64, 64)
        im.write_channel(store, "f", channel, np.zeros(size, np.uint8))
    with pytest.raises(InputError, match=r"different sizes.*f_green\.png 48x64"):
        im.read_field(store, "f")


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_field_round_trip(tmp_path, kind):
    url = tmp_path / ("set" if kind == "folder" else "set.zip/images")
    rng = np.random.default_rng(1)
    for dtype, top in ((np.uint8, 256), (np.uint16, 65536)):
        field = rng.integers(0, top, (33, 45, 4), dtype=dtype)
        with Store(url) as store:
            im.write_field(store, f"id-{dtype.__name__}", field)
        back = im.read_field(Store(url), f"id-{dtype.__name__}")
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, field)
    assert im.list_field_ids(Store(url)) == ["id-uint16", "id-uint8"]
    with pytest.raises(ValueError):
        im.write_channel(Store(url), "x", "red", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        im.write_field(Store(url), "x", np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("url", ["masks", "masks.zip/sub"])
def test_mask_round_trip_many_labels(tmp_path, url):
    mask = np.arange(40 * 50, dtype=np.int64).reshape(40, 50) % 1000  # labels up to 999
    with Store(tmp_path / url) as store:
        im.write_mask(store, "f", mask)
        im.write_channel(store, "f", "red", np.zeros((40, 50), np.uint8))
    store = Store(tmp_path / url)
    assert im.list_mask_ids(store) == ["f"]
    back = im.read_mask(store, "f", shape=(40, 50))
    assert back.dtype == np.uint16 and back.max() == 999
    np.testing.assert_array_equal(back, mask)
    with pytest.raises(ValueError, match="65535"):
        im.write_mask(store, "g", np.full((3, 3), 70_000))
    with pytest.raises(ValueError):
        im.write_mask(store, "g", np.full((3, 3), -1))


def test_mask_size_mismatch_and_missing(tmp_path):
    store = Store(tmp_path / "masks")
    im.write_mask(store, "f", np.ones((30, 20), np.uint16))
    with pytest.raises(InputError, match=r"f\.png is 20x30 but its field is 40x30"):
        im.read_mask(store, "f", shape=(30, 40))
    with pytest.raises(InputError, match="mask not found"):
        im.read_mask(store, "nope")


def test_shipped_masks(hpa_real):
    kaggle = Store(hpa_real / "kaggle-train" / "masks")
    field = im.read_field(Store(hpa_real / "kaggle-train" / "images"), KAGGLE_ID)
    mask = im.read_mask(kaggle, KAGGLE_ID, shape=field.shape[:2])
    assert mask.dtype == np.uint16 and set(np.unique(mask)) == set(range(9))
    cells = im.read_mask(Store(hpa_real / "bit-depth"), "1000_A12_2_cellmask")
    assert cells.dtype == np.uint16 and cells.max() == 21


def test_32bit_tiff_mask_with_many_labels(tmp_path):
    store = Store(tmp_path / "m")
    labels = np.arange(12, dtype=np.int32).reshape(3, 4) * 10_000  # up to 110000
    buf = io.BytesIO()
    tifffile.imwrite(buf, labels)
    store.write_bytes("f.tif", buf.getvalue())
    back = im.read_mask(store, "f")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
