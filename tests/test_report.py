import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from hpasc.io import images as imio
from hpasc.io.store import Store
from hpasc.report import build_report

PROB = [f"p{i:02d}" for i in range(19)]


@pytest.fixture
def out_dir(tmp_path):
    rng = np.random.default_rng(0)
    imgs, masks = Store(tmp_path / "images"), Store(tmp_path / "masks")
    rows = []
    for f in range(2):
        fid = f"field-{f}"
        img = rng.integers(0, 255, (96, 96, 4), dtype=np.uint8)
        mask = np.zeros((96, 96), np.uint16)
        mask[10:40, 10:40], mask[50:90, 20:70] = 1, 2
        imio.write_field(imgs, fid, img)
        imio.write_mask(masks, fid, mask)
        for cid in (1, 2):
            p = rng.random(19).astype(np.float32)
            rows.append({"image_id": fid, "cell_id": cid, **dict(zip(PROB, p, strict=True))})
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame(rows).to_parquet(out / "cells.parquet")
    img_level = pd.DataFrame(
        [{"image_id": f"field-{f}", **{c: 0.5 for c in PROB}} for f in range(2)]
    )
    img_level.to_parquet(out / "image_level.parquet")
    (out / "metric.json").write_text(
        json.dumps(
            {
                "mAP": 0.42,
                "per_class": {"0": 0.5, "13": 0.34},
                "baseline": {
                    "name": "image labels",
                    "mAP": 0.2,
                    "per_class": {"0": 0.3, "13": 0.1},
                },
            }
        )
    )
    log = out / "runs" / "cam" / "fold-0" / "logs" / "version_0"
    log.mkdir(parents=True)
    pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1],
            "step": [1, 2, 3, 4],
            "train/loss": [1.0, 0.9, 0.7, 0.6],
            "valid/map": [np.nan, 0.3, np.nan, 0.5],
        }
    ).to_csv(log / "metrics.csv", index=False)
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "title": "unit",
                "images": str(tmp_path / "images"),
                "masks": str(tmp_path / "masks"),
                "cells": "cells.parquet",
                "image_level": "image_level.parquet",
                "metric": "metric.json",
                "runs": ["runs"],
            }
        )
    )
    return out


def test_report_sections(out_dir, tmp_path):
    html_path = build_report(out_dir, tmp_path / "r.html")
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2  # one overlay per field, inlined
    assert "mAP 0.4200" in page and "baseline image labels: 0.2000" in page
    assert "Image-level vs cell-level agreement" in page
    assert "Training curves" in page and "valid/map" in page and "train/loss" in page
    assert page.count("<svg") == 3  # AP bars and one chart per logged metric, inline
    assert "Plasma membrane" in page  # legend
    # self-contained: nothing fetched (the SVG namespaces are names, not downloads)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def test_report_escapes_user_strings(out_dir, tmp_path):
    """Field ids, run names and titles are data, never markup: each appears escaped."""
    evil = "<script>alert(1)"  # no "/": it also names a file and a folder
    cells = pd.read_parquet(out_dir / "cells.parquet")
    cells["image_id"] = cells["image_id"].replace("field-0", f"f{evil}")
    cells.to_parquet(out_dir / "cells.parquet")
    (out_dir / "overlays").mkdir()
    (out_dir / "overlays" / f"f{evil}.png").write_bytes(
        cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    )
    (out_dir / "runs" / "cam" / "fold-0").rename(out_dir / "runs" / "cam" / evil)
    metric = json.loads((out_dir / "metric.json").read_text())
    metric["baseline"]["name"] = evil
    (out_dir / "metric.json").write_text(json.dumps(metric))
    page = build_report(out_dir, tmp_path / "r.html", title=evil).read_text()
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(1)"
    # title, heading, figure alt and caption, baseline in the headline and the bars' legend, and
    # the fold's line in both training charts
    assert page.count(escaped) == 8


def test_report_cli_and_errors(out_dir, tmp_path, cli):
    r = cli("report", out_dir, "-o", tmp_path / "x.html")
    assert r.returncode == 0, r.stderr
    r = cli("report", tmp_path / "nothing-here", "-o", tmp_path / "y.html")
    assert r.returncode != 0 and r.stderr.startswith("error:")


def test_report_renders_in_chromium(out_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, (
        "Debian chromium is needed to render the report: apt-get install chromium (make install does it as root)"
    )
    page = build_report(out_dir, tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] >= 1000 and img.std() > 5  # something was drawn


def test_legend_wraps_to_fit_every_class():
    from hpasc.viz import legend_strip

    one = legend_strip(800, [0])
    many = legend_strip(200, list(range(19)))
    assert one.shape == (22, 800, 3) and many.shape[1] == 200
    assert many.shape[0] >= 22 * 8  # 19 names cannot share a 200-px row: wrapped, none dropped
    assert (many[-22:] > 0).any()  # the last row holds the last names
