"""The visual report: one self-contained HTML page (images inlined) about a run or a prediction output.

Input folder: an output of ``hpasc predict fields`` / ``hpasc demo`` / a recipe's final step, which
holds ``manifest.json`` (where the images, masks, cell table, metrics and runs are), or a run folder
(only training curves then). Sections: per-field overlays (outlines coloured by top class, legend),
per-class AP bars when ground truth exists, image-level vs cell-level agreement, training curves.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpasc.classes import CLASS_NAMES, NUM_CLASSES
from hpasc.errors import InputError
from hpasc.viz import class_colours, top_class

MANIFEST = "manifest.json"
_PROB = [f"p{i:02d}" for i in range(NUM_CLASSES)]


def _hex(rgb) -> str:
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def bar_chart(
    values: dict[str, float],
    other: dict[str, float] | None = None,
    width: int = 640,
    labels: tuple[str, str] = ("model", "baseline"),
) -> str:
    """Horizontal bars (SVG) of per-class values in [0, 1]; ``other`` drawn as thin bars below."""
    rows = list(values)
    bar_h, gap, left = 14, 8, 260
    h = len(rows) * (bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" class="chart">']
    scale = width - left - 60
    for i, name in enumerate(rows):
        y = 20 + i * (bar_h + gap)
        v = float(values[name])
        parts.append(
            f'<text x="{left - 6}" y="{y + 11}" text-anchor="end" font-size="11">{html.escape(name)}</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y}" width="{max(v, 0) * scale:.1f}" height="{bar_h - 5}" fill="#3b7dd8"/>'
        )
        if other is not None and name in other:
            o = float(other[name])
            parts.append(
                f'<rect x="{left}" y="{y + bar_h - 5}" width="{max(o, 0) * scale:.1f}" height="4" fill="#d8893b"/>'
            )
        parts.append(
            f'<text x="{left + max(v, 0) * scale + 4:.1f}" y="{y + 10}" font-size="10">{v:.3f}</text>'
        )
    parts.append(f'<text x="{left}" y="12" font-size="11" fill="#3b7dd8">■ {labels[0]}</text>')
    if other is not None:
        parts.append(
            f'<text x="{left + 120}" y="12" font-size="11" fill="#d8893b">■ {labels[1]}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    width: int = 320,
    height: int = 180,
) -> str:
    """Small SVG line chart; ``series`` maps a name to (x, y)."""
    pts = [(x, y) for x, y in series.values() if len(x)]
    if not pts:
        return ""
    xs = np.concatenate([p[0] for p in pts]).astype(float)
    ys = np.concatenate([p[1] for p in pts]).astype(float)
    x0, x1 = float(xs.min()), float(xs.max()) or 1.0
    y0, y1 = float(np.nanmin(ys)), float(np.nanmax(ys))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1e-6
    pad = 30
    palette = ["#3b7dd8", "#d8893b", "#3bd87d", "#d83b6a", "#8a3bd8", "#777777"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">',
        f'<text x="{pad}" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="2" y="{pad + 4}" font-size="9">{y1:.3g}</text>',
        f'<text x="2" y="{height - pad}" font-size="9">{y0:.3g}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 5}" y2="{height - pad}" stroke="#999"/>',
    ]
    for i, (name, (x, y)) in enumerate(series.items()):
        ok = ~np.isnan(np.asarray(y, float))
        if not ok.any():
            continue
        px = pad + (np.asarray(x, float)[ok] - x0) / (x1 - x0) * (width - pad - 10)
        py = height - pad - (np.asarray(y, float)[ok] - y0) / (y1 - y0) * (height - 2 * pad)
        colour = palette[i % len(palette)]
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
            + " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
            + '"/>'
        )
        out.append(
            f'<text x="{width - 90}" y="{28 + 11 * i}" font-size="9" fill="{colour}">{html.escape(name[:18])}</text>'
        )
    out.append(f'<text x="{width // 2}" y="{height - 8}" font-size="9">epoch</text></svg>')
    return "".join(out)


def training_curves(roots: list[Path]) -> str:
    """Charts of every logged metric per epoch, one line per run/fold (Lightning CSV logs)."""
    files = sorted({f for r in roots if r.exists() for f in r.rglob("metrics.csv")})
    if not files:
        return ""
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
    charts = [line_chart(s, m) for m, s in sorted(per_metric.items())]
    return "".join(f'<div class="cell">{c}</div>' for c in charts if c)


def agreement_table(cells: pd.DataFrame, image_level: pd.DataFrame) -> str:
    """Per class: how often image-level and cell-level (max over cells) agree at 0.5, and their correlation."""
    cell_max = cells.groupby("image_id")[_PROB].max()
    img = image_level.set_index("image_id")[_PROB]
    common = cell_max.index.intersection(img.index)
    if len(common) == 0:
        return ""
    a, b = img.loc[common].to_numpy(), cell_max.loc[common].to_numpy()
    rows = []
    for k in range(NUM_CLASSES):
        agree = float(np.mean((a[:, k] > 0.5) == (b[:, k] > 0.5)))
        corr = (
            float(np.corrcoef(a[:, k], b[:, k])[0, 1])
            if a[:, k].std() > 0 and b[:, k].std() > 0
            else float("nan")
        )
        rows.append(
            f"<tr><td>{k}</td><td>{html.escape(CLASS_NAMES[k])}</td><td>{agree:.2f}</td>"
            f"<td>{'' if np.isnan(corr) else f'{corr:.2f}'}</td><td>{a[:, k].mean():.3f}</td><td>{b[:, k].mean():.3f}</td></tr>"
        )
    return (
        "<table><tr><th>#</th><th>class</th><th>agreement @0.5</th><th>correlation</th>"
        "<th>mean image-level p</th><th>mean max-cell p</th></tr>" + "".join(rows) + "</table>"
    )


def _overlays(manifest: dict[str, Any], base: Path, cells: pd.DataFrame, max_fields: int) -> str:
    from hpasc.io import images as imio
    from hpasc.io.store import Store
    from hpasc.viz import field_overlay, png_bytes

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
        tiles.append(
            f"<figure>{_img_tag(png, fid, 320)}<figcaption>{html.escape(fid)} · {n} cells</figcaption></figure>"
        )
    return "".join(tiles)


def _legend() -> str:
    cols = class_colours()
    return "".join(
        f'<span class="lg"><i style="background:{_hex(cols[k])}"></i>{html.escape(n)}</span>'
        for k, n in enumerate(CLASS_NAMES)
    )


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
figure{display:inline-block;margin:6px;text-align:center;font-size:11px}
.lg{display:inline-block;margin:2px 10px 2px 0;font-size:12px}.lg i{display:inline-block;width:10px;height:10px;margin-right:4px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.cell{display:inline-block;margin:4px}.big{font-size:20px;font-weight:bold}"""


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
    sections = []
    name = title or manifest.get("title") or src.name
    cells = None
    if manifest.get("cells") and (src / manifest["cells"]).is_file():
        cells = pd.read_parquet(src / manifest["cells"])
        n_fields = cells["image_id"].nunique()
        top = top_class(cells[_PROB].to_numpy())
        cells = cells.assign(shown_class=top)
        counts = np.bincount(top, minlength=NUM_CLASSES)
        summary = ", ".join(f"{CLASS_NAMES[k]}: {c}" for k, c in enumerate(counts) if c)
        sections.append(
            f"<p>{len(cells)} cells in {n_fields} fields. Cells per shown class — {html.escape(summary)}.</p>"
        )
        sections.append(
            "<h2>What the model saw</h2><p>Channels: red = microtubules, green = protein, blue = nucleus, "
            "yellow (added to red and green) = ER. Each cell's outline has the colour of the class in which it ranks highest among all cells here (per-class percentile of its probability — the metric ranks cells per class).</p>"
            f"<div>{_legend()}</div><div>{_overlays(manifest, src, cells, max_fields)}</div>"
        )
    metric_file = src / manifest.get("metric", "metric.json")
    if metric_file.is_file():
        m = json.loads(metric_file.read_text())
        per = {f"{k} {CLASS_NAMES[int(k)]}": v for k, v in m.get("per_class", {}).items()}
        base = m.get("baseline") or {}
        other = {
            f"{k} {CLASS_NAMES[int(k)]}": v for k, v in base.get("per_class", {}).items()
        } or None
        head = f'<p class="big">mAP {m["mAP"]:.4f}'
        if base:
            head += f' <span style="font-size:14px;font-weight:normal">(baseline {html.escape(base.get("name", "image-level"))}: {base["mAP"]:.4f})</span>'
        sections.append(
            f"<h2>Per-class average precision (competition metric, IoU ≥ 0.6)</h2>{head}</p>"
            + bar_chart(per, other, labels=("model", base.get("name", "baseline")))
        )
    if (
        cells is not None
        and manifest.get("image_level")
        and (src / manifest["image_level"]).is_file()
    ):
        table = agreement_table(cells, pd.read_parquet(src / manifest["image_level"]))
        if table:
            sections.append(
                "<h2>Image-level vs cell-level agreement</h2><p>Per field, the image-level probability "
                "against the maximum cell probability of the same class.</p>" + table
            )
    roots = [Path(r) for r in manifest.get("runs", [])] or [src]
    roots = [r if r.is_absolute() else src / r for r in roots]
    curves = training_curves(roots)
    if curves:
        sections.append(f"<h2>Training curves</h2>{curves}")
    if not sections:
        raise InputError(
            f"{src}: nothing to report (no {MANIFEST} with a cell table, no metric.json, no training logs)"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
        f"<style>{CSS}</style></head><body><h1>hpasc report — {html.escape(name)}</h1>{''.join(sections)}</body></html>"
    )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
