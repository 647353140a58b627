"""Pictures of what the models saw: channel composites and cell outlines coloured by class."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from hpasc.classes import CLASS_NAMES, NUM_CLASSES


def class_colours() -> np.ndarray:
    """(19, 3) uint8 RGB colours, well separated in hue; Negative is grey."""
    cols = []
    for i in range(NUM_CLASSES - 1):
        h = (i * 0.61803398875) % 1.0  # golden-ratio hue steps keep neighbours apart
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    cols.append((160, 160, 160))
    return np.asarray(cols, dtype=np.uint8)


def composite(image_hw4: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """RGB view of an R,G,B,Y field as HPA shows it: yellow adds to red and green; per-channel contrast stretch."""
    img = image_hw4.astype(np.float32)
    out = np.empty(img.shape[:2] + (3,), np.float32)
    out[..., 0] = img[..., 0] + 0.5 * img[..., 3]
    out[..., 1] = img[..., 1] + 0.5 * img[..., 3]
    out[..., 2] = img[..., 2]
    for c in range(3):
        hi = np.percentile(out[..., c], percentile)
        out[..., c] = out[..., c] / hi if hi > 0 else 0
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def outline_overlay(
    rgb: np.ndarray, mask: np.ndarray, cell_class: dict[int, int], thickness: int = 1
) -> np.ndarray:
    """Draw each cell's outline in the colour of its class (cells missing from ``cell_class``: white)."""
    out = rgb.copy()
    colours = class_colours()
    lut = np.full((int(mask.max()) + 1, 3), 255, np.uint8)
    for cid, k in cell_class.items():
        if 0 < cid < lut.shape[0]:
            lut[cid] = colours[k]
    m = mask.astype(np.int32)
    edge = np.zeros(m.shape, bool)
    edge[:-1] |= m[:-1] != m[1:]
    edge[1:] |= m[:-1] != m[1:]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    edge[:, 1:] |= m[:, :-1] != m[:, 1:]
    edge &= m > 0
    if thickness > 1:
        grown = cv2.dilate(m.astype(np.float32), np.ones((thickness, thickness), np.uint8)).astype(
            np.int32
        )
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((thickness, thickness), np.uint8)).astype(
            bool
        )
        m = np.where(m > 0, m, grown)
    out[edge] = lut[m[edge]]
    return out


def legend_strip(width: int, classes: list[int], row_height: int = 22) -> np.ndarray:
    """Rows naming the given classes in their colours (burned into overlay PNGs); wraps as needed."""
    colours = class_colours()
    placed: list[tuple[int, int, int]] = []  # (class, row, x)
    row, x = 0, 4
    for k in classes:
        (tw, _), _ = cv2.getTextSize(CLASS_NAMES[k], cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        if x > 4 and x + tw + 16 > width:
            row, x = row + 1, 4
        placed.append((k, row, x))
        x += tw + 24
    strip = np.zeros(((row + 1) * row_height, width, 3), np.uint8)
    for k, r, x in placed:
        y = r * row_height
        cv2.rectangle(strip, (x, y + 6), (x + 10, y + 16), tuple(int(c) for c in colours[k]), -1)
        cv2.putText(
            strip,
            CLASS_NAMES[k],
            (x + 14, y + 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return strip


def top_class(probs: np.ndarray) -> np.ndarray:
    """Class shown for each cell (rows of ``probs``, all cells of a table): the class in which the
    cell ranks highest among all cells (per-class percentile of its probability).

    The metric ranks cells per class, and models trained on weak labels are rarely calibrated: a
    plain argmax paints most cells with the most frequent class (Negative).
    """
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if len(p) == 0:
        return np.zeros(0, dtype=np.int64)
    ranks = p.argsort(axis=0, kind="stable").argsort(axis=0, kind="stable") / max(len(p) - 1, 1)
    return (ranks + 1e-9 * p).argmax(axis=1)  # ties (e.g. one cell): the higher probability wins


def field_overlay(
    image_hw4: np.ndarray,
    mask: np.ndarray,
    cell_class: dict[int, int],
    max_side: int = 768,
    legend: bool = True,
) -> np.ndarray:
    """Composite with outlines coloured by class (cell id -> class, e.g. from :func:`top_class`),
    down-scaled to ``max_side``, with a legend strip of the classes shown."""
    top = cell_class
    scale = min(1.0, max_side / max(mask.shape))
    rgb = composite(image_hw4)
    if scale < 1.0:
        size = (round(mask.shape[1] * scale), round(mask.shape[0] * scale))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST_EXACT)
    out = outline_overlay(rgb, mask, top, thickness=2)
    if legend:
        present = sorted(set(top.values()))
        out = np.concatenate([out, legend_strip(out.shape[1], present)], axis=0)
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
