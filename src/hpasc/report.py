"""The visual report: one self-contained HTML page (images inlined) about a run or a prediction output.

Input folder: an output of ``hpasc predict fields`` / ``hpasc demo`` / a recipe's final step, which
holds ``manifest.json`` (where the images, masks, cell table, metrics and runs are), or a run folder
(only training curves then). Sections: per-field overlays (outlines coloured by top class, legend),
per-class AP bars when ground truth exists, image-level vs cell-level agreement, training curves.

The page is the Jinja2 template ``templates/report.html.j2`` with autoescaping on, so every user
string (field ids, run names, titles, metric names) is escaped once, in one place; the charts are
drawn by matplotlib and inlined as SVG.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hpasc.classes import CLASS_NAMES, NUM_CLASSES
from hpasc.errors import InputError
from hpasc.io import images as imio
from hpasc.io.atomic import atomic_write
from hpasc.io.runs import METRICS_NAME
from hpasc.io.store import Store
from hpasc.viz import class_colours, field_overlay, png_bytes, top_class

MANIFEST = "manifest.json"
_PROB = [f"p{i:02d}" for i in range(NUM_CLASSES)]
_PX = 1 / 96  # inches per CSS pixel: chart sizes are given in pixels, as the page lays them out
_MODEL, _BASELINE = "#3b7dd8", "#d8893b"
_PALETTE = [_MODEL, _BASELINE, "#3bd87d", "#d83b6a", "#8a3bd8", "#777777"]
# Text stays text (searchable, escaped by the SVG writer); "$" in a run name is not mathtext.
_RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 8}

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("hpasc", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt field in the template fails, not renders blank
    trim_blocks=True,
)


def _hex(rgb) -> str:
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _svg(fig: Figure) -> Markup:
    """The figure as an inline ``<svg>`` element (no XML prolog, no metadata)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=dict.fromkeys(("Date", "Creator", "Format", "Type")))
    text = buf.getvalue()
    # matplotlib escapes every text it writes, so the element is safe to inline as it is.
    return Markup(text[text.index("<svg") :].replace("<svg ", '<svg class="chart" ', 1))


def _figure(width_px: float, height_px: float) -> Figure:
    # A bare Figure, not pyplot: no global backend or figure registry (safe in workers and threads).
    return Figure(figsize=(width_px * _PX, height_px * _PX), layout="constrained")


def bar_chart(
    values: dict[str, float],
    other: dict[str, float] | None = None,
    width: int = 640,
    labels: tuple[str, str] = ("model", "baseline"),
) -> Markup:
    """Horizontal bars (inline SVG) of per-class values in [0, 1]; ``other`` drawn as thin bars below."""
    rows = list(values)
    with matplotlib.rc_context(_RC):
        fig = _figure(width, len(rows) * 22 + 60)
        ax = fig.add_subplot()
        y = np.arange(len(rows), dtype=float)
        v = np.array([max(float(values[r]), 0.0) for r in rows])
        ax.barh(y - 0.12, v, height=0.5, color=_MODEL, label=labels[0])
        if other is not None:
            o = np.array([max(float(other.get(r, 0.0)), 0.0) for r in rows])
            ax.barh(y + 0.28, o, height=0.2, color=_BASELINE, label=labels[1])
        for yi, vi in zip(y, v, strict=True):
            ax.text(vi + 0.01, yi - 0.12, f"{vi:.3f}", va="center", fontsize=7)
        ax.set_yticks(y, rows)
        ax.invert_yaxis()  # first class on top, as in the tables
        ax.set_xlim(0, 1.08)
        ax.legend(loc="lower right", frameon=False, ncols=2, bbox_to_anchor=(1, 1))
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)


def line_chart(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    width: int = 320,
    height: int = 200,
) -> Markup:
    """Small line chart (inline SVG); ``series`` maps a name to (x, y). Empty when nothing to draw."""
    drawn = {
        name: (np.asarray(x, float), np.asarray(y, float))
        for name, (x, y) in series.items()
        if len(x) and not np.isnan(np.asarray(y, float)).all()
    }
    if not drawn:
        return Markup("")
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        ax = fig.add_subplot()
        for i, (name, (x, y)) in enumerate(drawn.items()):
            ok = ~np.isnan(y)
            ax.plot(x[ok], y[ok], color=_PALETTE[i % len(_PALETTE)], lw=1.5, label=name[:18])
        ax.set_title(title, fontsize=9, fontweight="bold", loc="left")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)


def training_curves(roots: list[Path]) -> list[Markup]:
    """Charts of every logged metric per epoch, one line per run/fold (their ``metrics.csv``)."""
    files = sorted({f for r in roots if r.exists() for f in r.rglob(METRICS_NAME)})
    per_metric: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for f in files:
        df = pd.read_csv(f)
        if "epoch" not in df:
            continue
        name = (
            "/".join(f.relative_to(f.parents[3] if len(f.parents) > 3 else f.parent).parts[:-1][:2])
            or f.parent.name
        )
        for col in df.columns:
            if col in ("epoch", "step") or not np.issubdtype(df[col].dtype, np.number):
                continue
            g = df[["epoch", col]].dropna().groupby("epoch")[col].mean()
            if len(g):
                per_metric.setdefault(col, {})[name] = (g.index.to_numpy(), g.to_numpy())
    charts = (line_chart(s, m) for m, s in sorted(per_metric.items()))
    return [c for c in charts if c]


def agreement_table(cells: pd.DataFrame, image_level: pd.DataFrame) -> list[dict[str, Any]]:
    """Per class: how often image-level and cell-level (max over cells) agree at 0.5, and their
    correlation (None when either side is constant). Empty when no field is in both tables."""
    cell_max = cells.groupby("image_id")[_PROB].max()
    img = image_level.set_index("image_id")[_PROB]
    common = cell_max.index.intersection(img.index)
    if len(common) == 0:
        return []
    a, b = img.loc[common].to_numpy(), cell_max.loc[common].to_numpy()
    rows = []
    for k in range(NUM_CLASSES):
        constant = a[:, k].std() == 0 or b[:, k].std() == 0
        rows.append(
            {
                "k": k,
                "name": CLASS_NAMES[k],
                "agree": float(np.mean((a[:, k] > 0.5) == (b[:, k] > 0.5))),
                "corr": None if constant else float(np.corrcoef(a[:, k], b[:, k])[0, 1]),
                "mean_image": float(a[:, k].mean()),
                "mean_cell": float(b[:, k].mean()),
            }
        )
    return rows


def _overlays(
    manifest: dict[str, Any], base: Path, cells: pd.DataFrame, max_fields: int
) -> list[dict[str, Any]]:
    overlay_dir = base / "overlays"
    ids = sorted(cells["image_id"].unique())[:max_fields]
    tiles = []
    for fid in ids:
        png_path = overlay_dir / f"{fid}.png"
        if png_path.is_file():
            png = png_path.read_bytes()
        elif manifest.get("images") and manifest.get("masks"):
            img = imio.read_field(Store(manifest["images"]), fid)
            mask = imio.read_mask(Store(manifest["masks"]), fid)
            sub = cells[cells["image_id"] == fid]
            classes = dict(
                zip(sub["cell_id"].astype(int), sub["shown_class"].astype(int), strict=True)
            )
            png = png_bytes(field_overlay(img, mask, classes, max_side=384))
        else:
            continue
        n = int((cells["image_id"] == fid).sum())
        tiles.append({"image_id": fid, "n_cells": n, "src": _data_uri(png)})
    return tiles


def _cells_section(
    manifest: dict[str, Any], src: Path, cells: pd.DataFrame, max_fields: int
) -> dict[str, Any]:
    counts = np.bincount(cells["shown_class"].to_numpy(), minlength=NUM_CLASSES)
    colours = class_colours()
    return {
        "n_cells": len(cells),
        "n_fields": cells["image_id"].nunique(),
        "summary": ", ".join(f"{CLASS_NAMES[k]}: {c}" for k, c in enumerate(counts) if c),
        "legend": [{"colour": _hex(colours[k]), "name": n} for k, n in enumerate(CLASS_NAMES)],
        "overlays": _overlays(manifest, src, cells, max_fields),
    }


def _metric_section(metric_file: Path) -> dict[str, Any]:
    m = json.loads(metric_file.read_text())

    def named(per_class: dict[str, float]) -> dict[str, float]:
        return {f"{k} {CLASS_NAMES[int(k)]}": v for k, v in per_class.items()}

    base = m.get("baseline") or {}
    baseline = {"name": base.get("name", "image-level"), "map": base["mAP"]} if base else None
    chart = bar_chart(
        named(m.get("per_class", {})),
        named(base.get("per_class", {})) or None,
        labels=("model", base.get("name", "baseline")),
    )
    return {"map": m["mAP"], "baseline": baseline, "chart": chart}


def build_report(
    source: str | Path, output: str | Path, max_fields: int = 12, title: str | None = None
) -> Path:
    """Write the HTML report for ``source`` (prediction output or run folder) to ``output``."""
    src = Path(source)
    if not src.exists():
        raise InputError(
            f"report source not found: {src} (give an output of `hpasc predict fields`, `hpasc demo` or a run folder)"
        )
    manifest: dict[str, Any] = {}
    if (src / MANIFEST).is_file():
        manifest = json.loads((src / MANIFEST).read_text())
    page: dict[str, Any] = {
        "title": title or manifest.get("title") or src.name,
        "cells": None,
        "metric": None,
        "agreement": [],
        "curves": [],
    }
    cells = None
    if manifest.get("cells") and (src / manifest["cells"]).is_file():
        cells = pd.read_parquet(src / manifest["cells"])
        cells = cells.assign(shown_class=top_class(cells[_PROB].to_numpy()))
        page["cells"] = _cells_section(manifest, src, cells, max_fields)
    metric_file = src / manifest.get("metric", "metric.json")
    if metric_file.is_file():
        page["metric"] = _metric_section(metric_file)
    if (
        cells is not None
        and manifest.get("image_level")
        and (src / manifest["image_level"]).is_file()
    ):
        page["agreement"] = agreement_table(cells, pd.read_parquet(src / manifest["image_level"]))
    roots = [Path(r) for r in manifest.get("runs", [])] or [src]
    roots = [r if r.is_absolute() else src / r for r in roots]
    page["curves"] = training_curves(roots)
    if not (page["cells"] or page["metric"] or page["agreement"] or page["curves"]):
        raise InputError(
            f"{src}: nothing to report (no {MANIFEST} with a cell table, no metric.json, no training logs)"
        )
    text = _TEMPLATES.get_template("report.html.j2").render(**page)
    out = Path(output)
    atomic_write(out, text)
    return out
