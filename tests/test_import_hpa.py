"""`hpasc import public-hpa` against a local HTTP server that fails some requests."""

from __future__ import annotations

import collections
import gzip
import http.server
import io
import random
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from hpasc.errors import ConfigError, HpascError
from hpasc.importer import (
    DEFAULT_URL_TEMPLATE,
    DownloadError,
    ImportOptions,
    PublicHpaField,
    RetryPolicy,
    channel_url,
    check_url_template,
    download_channel,
    field_id,
    image_path,
    import_public_hpa,
    read_public_hpa_fields,
    resolve_base_url,
)
from hpasc.io.images import CHANNELS, decode_image, to_uint8
from hpasc.prepare import resize_image
from hpasc.runner import read_errors_csv

SIZE = 48
FAST = RetryPolicy(retries=3, timeout=10, backoff=0.01, max_backoff=0.05)


class Server:
    """A local image server: ``files`` by URL path, ``plans[path]`` = behaviours of successive
    requests (``ok``, ``500``, ``404``, ``429``, ``truncate``, ``badgzip``, ``drop``), then ok."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[str]] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with server.lock:
                    server.hits[self.path] += 1
                    plan = server.plans.get(self.path) or []
                    action = plan.pop(0) if plan else "ok"
                body = server.files.get(self.path)
                if action == "404" or body is None:
                    self.send_error(404)
                elif action in ("500", "429"):
                    self.send_response(int(action))
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif action == "drop":
                    self.close_connection = True  # no response at all
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if action == "truncate":
                        self.wfile.write(body[: len(body) // 2])
                        self.close_connection = True
                    elif action == "badgzip":
                        # Flip a byte of the gzip CRC-32 trailer: decompression fails its check.
                        self.wfile.write(body[:-8] + bytes([body[-8] ^ 0xFF]) + body[-7:])
                    else:
                        self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def real16(hpa_real: Path) -> np.ndarray:
    data = (hpa_real / "bit-depth/383_D2_1_blue.tif.gz").read_bytes()
    return tifffile.imread(io.BytesIO(gzip.decompress(data)))


def tif_gz(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, image)
    return gzip.compress(buf.getvalue(), compresslevel=1)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


# Fields of the table: (Image, Label_idx, in_trainset, Cellline); ids 1_A1_1 .. 1_A5_1 kept.
ROWS = [
    ("https://images.proteinatlas.org/101/1_A1_1", "0|5", "False", "A-431"),
    ("https://images.proteinatlas.org/102/1_A2_1", "13", "False", "U-2 OS"),
    ("103/1_A3_1", "16", "False", "A-431"),  # relative Image paths occur too
    ("https://images.proteinatlas.org/104/1_A4_1", "2", "False", "HeLa"),
    ("https://images.proteinatlas.org/105/1_A5_1", "7|0", "False", "A-431"),
    ("https://images.proteinatlas.org/106/1_A6_1", "1", "True", "A-431"),  # in Kaggle train
    ("https://images.proteinatlas.org/107/1_A7_1", "", "False", "A-431"),  # no label
    ("https://images.proteinatlas.org/108/1_A8_1", "3", "False", ""),  # no cell line
]
KEPT = ["1_A1_1", "1_A2_1", "1_A3_1", "1_A4_1", "1_A5_1"]


def write_table(path: Path, rows=ROWS) -> Path:
    lines = ["Image,Label_idx,in_trainset,Cellline"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def serve_fields(server: Server, real16: np.ndarray, rows=ROWS, side: int = 150) -> dict:
    """Put 4 cropped 16-bit channels per field on the server; return the arrays by URL path."""
    rng = random.Random(0)
    arrays = {}
    for image, *_ in rows:
        path = image_path(image)
        for color in CHANNELS:
            y, x = rng.randrange(0, 2048 - side), rng.randrange(0, 2048 - side)
            arr = np.ascontiguousarray(real16[y : y + side, x : x + side])
            url_path = f"/{path}_{color}.tif.gz"
            server.files[url_path] = tif_gz(arr)
            arrays[url_path] = arr
    return arrays


def expected(arr: np.ndarray, size: int = SIZE) -> np.ndarray:
    return to_uint8(resize_image(arr, size))


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --------------------------------------------------------------------------------------------


def test_ids_paths_and_urls():
    assert image_path("https://images.proteinatlas.org/10005/921_B9_1") == "10005/921_B9_1"
    assert image_path("/10005/921_B9_1/") == "10005/921_B9_1"
    assert field_id("https://images.proteinatlas.org/10005/921_B9_1") == "921_B9_1"
    fld = PublicHpaField("921_B9_1", "10005/921_B9_1")
    assert channel_url(fld, "green") == (
        "https://images.proteinatlas.org/10005/921_B9_1_green.tif.gz"
    )
    assert (
        channel_url(
            fld, "red", ext="jpg", base_url="http://m", template="{base}/x/{id}-{color}.{ext}"
        )
        == "http://m/x/921_B9_1-red.jpg"
    )
    assert check_url_template(DEFAULT_URL_TEMPLATE) == DEFAULT_URL_TEMPLATE
    for bad in ("{base}/{path}.{ext}", "{base}/{nope}_{color}", "{base"):
        with pytest.raises(ConfigError):
            check_url_template(bad)


def test_base_url_resolution(monkeypatch):
    monkeypatch.delenv("HPASC_HPA_BASE_URL", raising=False)
    assert resolve_base_url() == "https://images.proteinatlas.org"
    monkeypatch.setenv("HPASC_HPA_BASE_URL", "http://mirror.local/hpa/")
    assert resolve_base_url() == "http://mirror.local/hpa"
    assert resolve_base_url("http://other") == "http://other"
    assert ImportOptions().base_url == "http://mirror.local/hpa"  # library users get it too
    with pytest.raises(ConfigError, match="http://"):
        resolve_base_url("ftp://x")


def test_retry_policy_is_seeded_and_bounded():
    policy = RetryPolicy(backoff=1.0, max_backoff=5.0)
    waits = [policy.delay(k, random.Random("s")) for k in range(6)]
    assert waits == [policy.delay(k, random.Random("s")) for k in range(6)]
    for k, w in enumerate(waits):
        d = min(5.0, 2.0**k)
        assert d / 2 <= w <= d
    assert policy.delay(0, random.Random(1), retry_after=3.0) == 3.0
    assert policy.delay(0, random.Random(1), retry_after=100.0) == 5.0


def test_table_filtering_matches_label_parser(tmp_path):
    from hpasc.classes import read_public_hpa_labels

    table = write_table(tmp_path / "kaggle_2021.tsv")
    fields = read_public_hpa_fields(table)
    assert [f.id for f in fields] == KEPT == read_public_hpa_labels(table).ids
    assert fields[0].path == "101/1_A1_1" and fields[2].path == "103/1_A3_1"
    clash = write_table(tmp_path / "clash.csv", ROWS[:2] + [("999/1_A1_1", "1", "False", "A")])
    with pytest.raises(HpascError, match="1_A1_1"):
        read_public_hpa_fields(clash)


def test_download_channel_retries_then_gives_up(server, real16):
    arr = np.ascontiguousarray(real16[:40, :60])
    server.files["/f_blue.tif.gz"] = tif_gz(arr)
    server.plans["/f_blue.tif.gz"] = ["500", "drop", "truncate", "badgzip"]
    slept = []
    with pytest.raises(DownloadError, match=r"f_blue.tif.gz: gave up after 4 tries; last error: "):
        download_channel(server.url + "/f_blue.tif.gz", FAST, sleep=slept.append)
    assert server.hits["/f_blue.tif.gz"] == 4 and len(slept) == 3
    # One more try is enough now that the plan is exhausted.
    image, retries, nbytes = download_channel(server.url + "/f_blue.tif.gz", FAST)
    assert retries == 0 and nbytes == len(server.files["/f_blue.tif.gz"])
    np.testing.assert_array_equal(image, arr)
    assert image.dtype == np.uint16
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_channel(server.url + "/missing_blue.tif.gz", FAST)
    assert server.hits["/missing_blue.tif.gz"] == 1  # permanent: no retry


@pytest.mark.parametrize("workers", [1, 2])
def test_import_with_failing_server_and_resume(tmp_path, server, real16, workers):
    arrays = serve_fields(server, real16)
    table = write_table(tmp_path / "kaggle_2021.tsv")
    server.plans.update(
        {
            "/101/1_A1_1_blue.tif.gz": ["500"],
            "/102/1_A2_1_red.tif.gz": ["truncate"],
            "/103/1_A3_1_green.tif.gz": ["badgzip"],
            "/105/1_A5_1_yellow.tif.gz": ["429", "drop"],
            "/104/1_A4_1_yellow.tif.gz": ["404"] * 100,  # gone for good
        }
    )
    out = tmp_path / "hpa-public-48"
    options = ImportOptions(size=SIZE, base_url=server.url, policy=FAST)
    summary = import_public_hpa(
        table, out, options, workers=workers, on_error="skip", progress=False
    )
    assert (summary.run.done, summary.run.skipped, summary.run.failed) == (4, 0, 1)
    assert summary.retries == 5
    assert "4 done, 0 skipped, 1 failed; 5 retries" in str(summary)

    done = [f for f in KEPT if f != "1_A4_1"]
    for fid, (image, *_) in zip(KEPT, ROWS, strict=False):
        for color in CHANNELS:
            png = out / f"{fid}_{color}.png"
            if fid == "1_A4_1":
                assert not png.exists()  # a failed field leaves no partial channels
                continue
            got = read_png(png)
            assert got.shape == (SIZE, SIZE) and got.dtype == np.uint8
            np.testing.assert_array_equal(
                got, expected(arrays[f"/{image_path(image)}_{color}.tif.gz"])
            )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{f}_{c}.png" for f in done for c in CHANNELS] + ["errors.csv", ".hpasc-output.json"]
    )
    (row,) = read_errors_csv(out / "errors.csv")
    assert row[0] == "1_A4_1" and "104/1_A4_1_yellow.tif.gz" in row[1] and "HTTP 404" in row[1]
    assert server.hits["/104/1_A4_1_yellow.tif.gz"] == 1
    # Dropped rows of the table are never requested.
    assert not [p for p in server.hits if "1_A6_1" in p or "1_A7_1" in p or "1_A8_1" in p]

    # Resume: finished fields are not downloaded again; the broken one is retried.
    before = sum(server.hits.values())
    summary = import_public_hpa(
        table, out, options, workers=workers, on_error="skip", progress=False
    )
    assert (summary.run.done, summary.run.skipped, summary.run.failed) == (0, 4, 1)
    assert sum(server.hits.values()) - before == 4  # only the 4 channels of 1_A4_1
    server.plans["/104/1_A4_1_yellow.tif.gz"] = []
    summary = import_public_hpa(
        table, out, options, workers=workers, on_error="skip", progress=False
    )
    assert (summary.run.done, summary.run.skipped, summary.run.failed) == (1, 4, 0)
    assert read_errors_csv(out / "errors.csv") == []
    assert read_png(out / "1_A4_1_yellow.png").shape == (SIZE, SIZE)


def test_stop_on_error_names_field_and_url(tmp_path, server, real16):
    serve_fields(server, real16, ROWS[:2])
    table = write_table(tmp_path / "t.csv", ROWS[:2])
    server.plans["/102/1_A2_1_green.tif.gz"] = ["500"] * 10
    options = ImportOptions(
        size=SIZE, base_url=server.url, policy=RetryPolicy(retries=1, backoff=0)
    )
    with pytest.raises(HpascError) as info:
        import_public_hpa(table, tmp_path / "out", options, workers=1, progress=False)
    message = str(info.value)
    assert "1_A2_1" in message and "102/1_A2_1_green.tif.gz" in message and "2 tries" in message
    assert "\n" not in message
    assert not (tmp_path / "out/errors.csv").exists()
    assert server.hits["/102/1_A2_1_green.tif.gz"] == 2


def test_keep_dtype_limit_and_zip_output(tmp_path, server, real16):
    arrays = serve_fields(server, real16)
    table = write_table(tmp_path / "t.csv")
    options = ImportOptions(size=SIZE, dtype="keep", base_url=server.url, policy=FAST)
    summary = import_public_hpa(
        table, tmp_path / "set.zip", options, workers=1, limit=2, progress=False
    )
    assert summary.run.done == 2
    import zipfile

    with zipfile.ZipFile(tmp_path / "set.zip") as zf:
        items = [n for n in zf.namelist() if n != ".hpasc-output.json"]  # how it was made
        assert sorted(items) == sorted(f"{f}_{c}.png" for f in KEPT[:2] for c in CHANNELS)
        got = decode_image(zf.read("1_A2_1_blue.png"), "1_A2_1_blue.png")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, resize_image(arrays["/102/1_A2_1_blue.tif.gz"], SIZE))


def test_file_url_mirror(tmp_path, real16):
    mirror = tmp_path / "mirror"
    (mirror / "101").mkdir(parents=True)
    for color in CHANNELS:
        (mirror / f"101/1_A1_1_{color}.tif.gz").write_bytes(tif_gz(real16[:64, :64]))
    table = write_table(tmp_path / "t.csv", ROWS[:2])  # 1_A2_1 is not in the mirror
    options = ImportOptions(size=16, base_url=mirror.as_uri(), policy=FAST)
    summary = import_public_hpa(
        table, tmp_path / "out", options, workers=1, on_error="skip", progress=False
    )
    assert (summary.run.done, summary.run.failed) == (1, 1)
    np.testing.assert_array_equal(
        read_png(tmp_path / "out/1_A1_1_green.png"), expected(real16[:64, :64], 16)
    )
    (row,) = read_errors_csv(tmp_path / "out/errors.csv")
    assert row[0] == "1_A2_1" and "no such file" in row[1] and "gave up" not in row[1]


def test_conversion_matches_hpa_8bit_export(tmp_path, server, hpa_real):
    """The 16-bit server file, imported, equals HPA's own 8-bit PNG of it, resized alike."""
    tif = (hpa_real / "bit-depth/383_D2_1_blue.tif.gz").read_bytes()
    for color in CHANNELS:
        server.files[f"/1/383_D2_1_{color}.tif.gz"] = tif
    table = write_table(tmp_path / "t.csv", [("1/383_D2_1", "0", "False", "A-431")])
    options = ImportOptions(size=256, base_url=server.url, policy=FAST)
    import_public_hpa(table, tmp_path / "out", options, workers=1, progress=False)
    got = read_png(tmp_path / "out/383_D2_1_blue.png")
    hpa8 = cv2.imread(str(hpa_real / "bit-depth/383_D2_1_blue.8bit.png"), cv2.IMREAD_UNCHANGED)
    reference = cv2.resize(hpa8, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(got.astype(int) - reference).max() <= 1


def test_cli_public_hpa(tmp_path, server, real16, monkeypatch):
    from typer.testing import CliRunner

    from hpasc.cli import app

    serve_fields(server, real16, ROWS[:1])
    table = write_table(tmp_path / "t.csv", ROWS[:1])
    monkeypatch.setenv("HPASC_HPA_BASE_URL", server.url)
    args = ["import", "public-hpa", str(table), str(tmp_path / "out"), "--size", "32"]
    args += ["--workers", "1", "--backoff", "0", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "import-summary: 1 done, 0 skipped, 0 failed; 0 retries" in result.output
    assert read_png(tmp_path / "out/1_A1_1_red.png").shape == (32, 32)
    table2 = write_table(tmp_path / "t2.csv", ROWS[:2])  # 1_A2_1 is not on the server
    args2 = ["import", "public-hpa", str(table2), str(tmp_path / "out"), "--size", "32"]
    result = CliRunner().invoke(app, [*args2, "--on-error", "skip", "--no-progress"])
    assert result.exit_code == 1
    assert "0 done, 1 skipped, 1 failed" in result.output
    result = CliRunner().invoke(app, [*args, "--ext", "bmp"])  # the choices are the CLI's too
    assert result.exit_code == 2 and "'--ext'" in result.output and "'bmp'" in result.output
    with pytest.raises(ConfigError, match="--ext must be one of tif.gz, jpg, png, got 'bmp'"):
        ImportOptions(ext="bmp")


def test_also_sizes_are_each_resized_from_the_original(tmp_path, server, real16, cli):
    """`--size 48 --also 24=OUT2`: the 24-px copy comes from the download, not from the 48-px
    one (as the 7th place made its 768 and 1536 sets); with --interpolation linear."""
    arrays = serve_fields(server, real16, ROWS[:2])
    table = write_table(tmp_path / "t.csv", ROWS[:2])
    big, small = tmp_path / "big", tmp_path / "small"
    r = cli(
        "import", "public-hpa", table, big, "--size", SIZE, "--also", f"24={small}",
        "--interpolation", "linear", "--base-url", server.url, "--workers", 1, "--retries", 0,
        "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    for fid, (image, *_) in zip(KEPT[:2], ROWS[:2], strict=True):
        for color in CHANNELS:
            arr = arrays[f"/{image_path(image)}_{color}.tif.gz"]
            got_big, got_small = (
                read_png(big / f"{fid}_{color}.png"),
                read_png(small / f"{fid}_{color}.png"),
            )
            np.testing.assert_array_equal(got_big, to_uint8(resize_image(arr, SIZE, "linear")))
            np.testing.assert_array_equal(got_small, to_uint8(resize_image(arr, 24, "linear")))
    from_big = resize_image(read_png(big / f"{KEPT[0]}_green.png"), 24, "linear")
    assert not np.array_equal(from_big, read_png(small / f"{KEPT[0]}_green.png"))
    # resume needs both sets: a field missing in the second is fetched again
    (small / f"{KEPT[0]}_red.png").unlink()
    before = sum(server.hits.values())
    r = cli("import", "public-hpa", table, big, "--size", SIZE, "--also", f"24={small}",
            "--interpolation", "linear", "--base-url", server.url, "--workers", 1, "--no-progress")  # fmt: skip
    assert r.returncode == 0 and sum(server.hits.values()) - before == 4
    assert (small / f"{KEPT[0]}_red.png").exists()
    r = cli("import", "public-hpa", table, big, "--also", "x=y", "--base-url", server.url)
    assert r.returncode == 2 and "--also must be SIZE=STORE" in r.stderr


def test_import_into_a_set_of_another_size_refuses(tmp_path, server, real16):
    from hpasc.errors import OutputError

    serve_fields(server, real16, ROWS[:1])
    table = write_table(tmp_path / "t.csv", ROWS[:1])
    options = ImportOptions(size=SIZE, base_url=server.url, policy=FAST)
    import_public_hpa(table, tmp_path / "out", options, workers=1, progress=False)
    before = sum(server.hits.values())
    other = ImportOptions(size=SIZE // 2, base_url=server.url, policy=FAST)
    with pytest.raises(OutputError, match=f"made with --size {SIZE} .this run: --size {SIZE // 2}"):
        import_public_hpa(table, tmp_path / "out", other, workers=1, progress=False)
    assert sum(server.hits.values()) == before  # refused before any download
    assert read_png(tmp_path / "out/1_A1_1_red.png").shape == (SIZE, SIZE)
