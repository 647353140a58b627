"""`download_weights`: HTTP fetch with size and MD5 checks, against a local server only."""

import hashlib
import json
import threading
import types
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hpasc.errors import InputError
from hpasc.segment.hpa_weights import WEIGHT_FILES, download_weights


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path/site`` with a fake nuclei weight file and a manifest."""
    site = tmp_path / "site"
    (site / "files").mkdir(parents=True)
    payload = bytes(range(256)) * 4096  # 1 MiB
    (site / "files" / WEIGHT_FILES["nuclei"]).write_bytes(payload)

    def manifest(md5: str) -> None:
        entry = {"key": WEIGHT_FILES["nuclei"], "size": len(payload), "checksum": f"md5:{md5}"}
        (site / "record.json").write_text(json.dumps({"files": [entry]}))

    manifest(hashlib.md5(payload).hexdigest())
    handler = partial(_QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield types.SimpleNamespace(base=base, payload=payload, manifest=manifest)
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_checks_size_and_md5_and_reports_progress(server, tmp_path):
    seen = []
    out = tmp_path / "weights"
    [result] = download_weights(
        out,
        ("nuclei",),
        base_url=f"{server.base}/files",
        manifest_url=f"{server.base}/record.json",
        progress=lambda name, done, total: seen.append((name, done, total)),
    )
    assert result.path == out / WEIGHT_FILES["nuclei"]
    assert result.path.read_bytes() == server.payload
    assert result.verified and not result.skipped
    assert seen[-1] == (WEIGHT_FILES["nuclei"], len(server.payload), len(server.payload))
    assert sorted(p.name for p in out.iterdir()) == [WEIGHT_FILES["nuclei"]]  # no temp left
    # A second call finds the verified file and does not fetch it again.
    [again] = download_weights(
        out, ("nuclei",), base_url=f"{server.base}/files", manifest_url=f"{server.base}/record.json"
    )
    assert again.skipped


def test_md5_mismatch_leaves_no_file(server, tmp_path):
    server.manifest("0" * 32)
    out = tmp_path / "weights"
    with pytest.raises(InputError, match="corrupt.*MD5"):
        download_weights(
            out,
            ("nuclei",),
            base_url=f"{server.base}/files",
            manifest_url=f"{server.base}/record.json",
        )
    assert not out.exists()  # no temp file, and the folder it created is gone too


def test_urls_come_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HPASC_WEIGHTS_URL", f"{server.base}/files")
    monkeypatch.setenv("HPASC_WEIGHTS_MANIFEST", "")  # no manifest: Content-Length check only
    [result] = download_weights(tmp_path / "w", ("nuclei",))
    assert result.path.read_bytes() == server.payload and not result.verified


def test_unreachable_file_is_a_one_line_error(server, tmp_path):
    with pytest.raises(InputError, match="cannot download") as info:
        download_weights(
            tmp_path / "w", ("cell",), base_url=f"{server.base}/files", manifest_url=""
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "w").exists()


def test_unknown_role_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown weight roles"):
        download_weights(tmp_path, ("everything",), manifest_url="")
