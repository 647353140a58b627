"""Synthetic HPA-like fields with per-cell ground truth.

A field is a square image of touching, non-overlapping, irregular cells on a dark background,
stored as the four HPA channels: blue (nucleus), red (microtubules), yellow (endoplasmic
reticulum) and green (the protein). Every cell draws its own labels; its green pattern is drawn
from those labels only, so the image label (the union of the cell labels) is weak supervision
exactly as in the HPA single-cell competition. See ``docs/synth.md`` for the class patterns.

:func:`make_field` builds one field in memory from a generator; :func:`synthesize` writes a
whole data set (images, masks, ``train.csv``, ``solution.csv``, ``cells.csv``) to a folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from hpasc.classes import NEGATIVE, NUM_CLASSES
from hpasc.errors import OutputError
from hpasc.io import images
from hpasc.io.store import Store
from hpasc.options import merged, option, validate
from hpasc.progress import track
from hpasc.rle import encode_instance_mask

NUCLEOPLASM = 0
NUCLEAR_MEMBRANE = 1
NUCLEOLI = 2
NUCLEAR_SPECKLES = 4
NUCLEAR_BODIES = 5
ER = 6
MICROTUBULES = 10
CENTROSOME = 12
PLASMA_MEMBRANE = 13
MITOCHONDRIA = 14
AGGRESOME = 15
CYTOSOL = 16
VESICLES = 17

#: Classes with a green pattern of their own (Negative is the absence of one).
PATTERN_CLASSES: tuple[int, ...] = (
    NUCLEOPLASM,
    NUCLEAR_MEMBRANE,
    NUCLEOLI,
    NUCLEAR_SPECKLES,
    NUCLEAR_BODIES,
    ER,
    MICROTUBULES,
    CENTROSOME,
    PLASMA_MEMBRANE,
    MITOCHONDRIA,
    AGGRESOME,
    CYTOSOL,
    VESICLES,
)
MIN_SIZE = 128


@dataclass
class SynthField:
    """One synthetic field.

    Attributes
    ----------
    image : (H, W, 4) uint8, channels in R, G, B, Y order.
    mask : (H, W) uint16 instance labels, 0 = background, cells 1..n.
    cell_labels : cell id -> sorted class indices (``[18]`` for a Negative cell).
    image_labels : sorted union of the cell labels.
    """

    image: np.ndarray
    mask: np.ndarray
    cell_labels: dict[int, list[int]]
    image_labels: list[int]


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote."""

    out: Path
    n_images: int
    n_cells: int
    size: int
    bit_depth: int
    seconds: float
    #: number of cells carrying each class index (only classes that occur)
    cell_class_counts: dict[int, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Random textures
# --------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth Gaussian noise with features about ``scale`` pixels wide, zero mean, unit std.

    Drawn on a coarse grid and upsampled, so its cost hardly depends on ``scale``.
    """
    h, w = shape
    # white noise on a grid of half the feature size, blurred there (cheap) to hide the grid,
    # then interpolated up to full size
    step = max(1.0, scale / 2)
    gh, gw = max(4, round(h / step)), max(4, round(w / step))
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), 0.35 * scale / step, borderType=cv2.BORDER_REFLECT)
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) if (gh, gw) != (h, w) else grid
    up -= up.mean()
    up /= up.std() + 1e-6
    return up


def _ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin curvy lines along the zero crossings of ``noise`` (a filament / reticulum texture)."""
    return np.exp(-((noise / width) ** 2))


# --------------------------------------------------------------------------------------------
# Cell layout
# --------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    lab: np.ndarray  # (H, W) uint16 cell ids
    nuc: np.ndarray  # (H, W) bool nucleus pixels
    dnuc: np.ndarray  # (H, W) float32 normalised elliptic distance to the nearest nucleus centre
    cx: np.ndarray  # per cell, index 0 = background
    cy: np.ndarray
    a: np.ndarray  # nucleus semi-axes (px)
    b: np.ndarray
    ext: np.ndarray  # cytoplasm thickness (px)
    boxes: list  # per cell id - 1: (slice_y, slice_x)


def _place_cells(rng: np.random.Generator, size: int) -> tuple:
    """Centres, nucleus axes, orientation and cytoplasm thickness of the cells of one field."""
    n_target = int(rng.integers(8, 26))
    cover = rng.uniform(0.55, 0.95)
    r_mean = math.sqrt(cover * size * size / (n_target * math.pi))
    n_cand = 30 * n_target
    pos = rng.uniform(0, size, (n_cand, 2)).astype(np.float32)
    radius = r_mean * rng.uniform(0.75, 1.25, n_cand)
    a = radius * rng.uniform(0.4, 0.55, n_cand)
    b = a * rng.uniform(0.6, 1.0, n_cand)
    angle = rng.uniform(0, math.pi, n_cand)
    ext = (radius - np.sqrt(a * b)) * rng.uniform(0.8, 1.3, n_cand)
    accepted: list[int] = []
    for i in range(n_cand):
        if accepted:
            d = np.hypot(*(pos[accepted] - pos[i]).T)
            # cells keep apart by ~their radii; nuclei (ellipses within radius a) never touch
            if np.any(d < 0.72 * (radius[accepted] + radius[i])) or np.any(
                d < 1.15 * (a[accepted] + a[i])
            ):
                continue
        accepted.append(i)
        if len(accepted) == n_target:
            break
    k = np.asarray(accepted)
    return pos[k, 0], pos[k, 1], a[k], b[k], angle[k], ext[k], r_mean


def _layout(rng: np.random.Generator, size: int) -> _Layout:
    """Touching, non-overlapping cells grown around elliptic nuclei on warped coordinates."""
    shape = (size, size)
    s = size / 256
    cx, cy, a, b, angle, ext, r_mean = _place_cells(rng, size)
    # Coordinates warped by smooth noise make cell borders wavy; the fine warp makes them ragged.
    warp = 0.22 * r_mean
    wx = warp * np.clip(_noise(rng, shape, r_mean), -2.5, 2.5) + 1.2 * s * _noise(rng, shape, 4 * s)
    wy = warp * np.clip(_noise(rng, shape, r_mean), -2.5, 2.5) + 1.2 * s * _noise(rng, shape, 4 * s)
    rough = np.clip(0.05 * _noise(rng, shape, 3 * s), -0.2, 0.2)  # ragged nucleus outline
    t_max = 1.6
    best = np.clip(1.0 + 0.3 * _noise(rng, shape, r_mean), 0.5, t_max)  # background threshold
    lab = np.zeros(shape, np.uint16)
    nuc_lab = np.zeros(shape, np.uint16)
    dnuc = np.full(shape, 10.0, np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    max_wx, max_wy = float(np.abs(wx).max()), float(np.abs(wy).max())
    for i in range(len(cx)):
        # cytoplasm: elliptic distance on warped coordinates, in units of this cell's thickness;
        # t < t_max needs an elliptic distance below 1 + t_max / k
        k = math.sqrt(a[i] * b[i]) / ext[i]
        reach = a[i] * (1 + t_max / k) + 2
        win, gx, gy = _window(size, cx[i], cy[i], reach + max_wx, reach + max_wy)
        ux, uy = gx + wx[win], gy + wy[win]
        p = ux * (cos[i] / a[i]) + uy * (sin[i] / a[i])
        q = uy * (cos[i] / b[i]) - ux * (sin[i] / b[i])
        t = np.hypot(p, q)
        t -= 1
        t *= k
        closer = t < best[win]
        best[win][closer] = t[closer]
        lab[win][closer] = i + 1
        # nucleus: the same ellipse on unwarped coordinates with a ragged outline
        win, gx, gy = _window(size, cx[i], cy[i], 1.3 * a[i] + 2, 1.3 * a[i] + 2)
        p = gx * (cos[i] / a[i]) + gy * (sin[i] / a[i])
        q = gy * (cos[i] / b[i]) - gx * (sin[i] / b[i])
        dn = np.hypot(p, q) * (1 + rough[win])
        nuc_lab[win][dn < 1] = i + 1
        np.minimum(dnuc[win], dn, out=dnuc[win])
    inside = nuc_lab > 0
    lab[inside] = nuc_lab[inside]  # nuclei never overlap, so each nucleus stays whole in its cell
    lab = _keep_nucleus_component(lab, nuc_lab)
    lab, keep = _drop_small(lab, nuc_lab, min_area=max(40.0, 0.12 * math.pi * r_mean**2))
    nuc = (nuc_lab > 0) & (lab > 0)
    boxes = ndimage.find_objects(lab)

    def per_cell(v: np.ndarray) -> np.ndarray:
        return np.concatenate(([1.0], v[keep])).astype(np.float32)

    return _Layout(
        lab, nuc, dnuc, per_cell(cx), per_cell(cy), per_cell(a), per_cell(b), per_cell(ext), boxes
    )


def _window(
    size: int, cx: float, cy: float, rx: float, ry: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Slices of the box of half-sides (rx, ry) around (cx, cy), and its coordinates from there."""
    y0, y1 = max(0, int(cy - ry)), min(size, int(cy + ry) + 2)
    x0, x1 = max(0, int(cx - rx)), min(size, int(cx + rx) + 2)
    gx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    gy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    return (slice(y0, y1), slice(x0, x1)), gx, gy


def _keep_nucleus_component(lab: np.ndarray, nuc_lab: np.ndarray) -> np.ndarray:
    """Make every cell one 4-connected region: keep the piece holding its nucleus."""
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        own = lab[box] == i
        n, comp = cv2.connectedComponents(own.view(np.uint8), connectivity=4)
        if n <= 2:
            continue
        in_nucleus = comp[nuc_lab[box] == i]
        keep = np.bincount(in_nucleus, minlength=n)[1:].argmax() + 1 if in_nucleus.size else 1
        lab[box][own & (comp != keep)] = 0
    return lab


def _drop_small(
    lab: np.ndarray, nuc_lab: np.ndarray, min_area: float
) -> tuple[np.ndarray, np.ndarray]:
    """Remove slivers (cells mostly outside the field) and renumber cells 1..n."""
    n = int(lab.max())
    area = np.bincount(lab.ravel(), minlength=n + 1)
    nuc_area = np.bincount(nuc_lab[lab == nuc_lab].ravel(), minlength=n + 1)
    keep = (area[1:] >= min_area) & (nuc_area[1:] >= 0.2 * min_area)
    keep[np.argmax(area[1:])] = True  # a field is never empty
    new_id = np.zeros(n + 1, np.uint16)
    new_id[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.uint16)
    return new_id[lab], np.flatnonzero(keep)


# --------------------------------------------------------------------------------------------
# Per-cell labels
# --------------------------------------------------------------------------------------------


def _draw_labels(rng: np.random.Generator, n_cells: int) -> dict[int, list[int]]:
    """1-2 field classes; each cell carries one or both of them, or is Negative."""
    if n_cells == 0:
        return {}
    if rng.random() < 0.05:  # a field with no protein pattern at all
        return {c: [NEGATIVE] for c in range(1, n_cells + 1)}
    k = 1 if rng.random() < 0.6 else 2
    classes = sorted(int(c) for c in rng.choice(PATTERN_CLASSES, size=k, replace=False))
    negative = rng.random(n_cells) < rng.uniform(0.15, 0.6)
    if negative.all():
        negative[rng.integers(n_cells)] = False
    choice = rng.choice(3, size=n_cells, p=[0.3, 0.3, 0.4])
    labels: dict[int, list[int]] = {}
    for c in range(n_cells):
        if negative[c]:
            labels[c + 1] = [NEGATIVE]
        elif k == 1:
            labels[c + 1] = classes[:]
        else:
            labels[c + 1] = (
                [classes[0]] if choice[c] == 0 else [classes[1]] if choice[c] == 1 else classes[:]
            )
    return labels


# --------------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------------


def _sample_points(
    rng: np.random.Generator,
    region: np.ndarray,
    boxes: list,
    counts: np.ndarray,
    tries: int = 24,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random pixels of ``region == c``: up to ``counts[c]`` per cell c (rejection in its box).

    Returns (cell ids, ys, xs).
    """
    cells = np.flatnonzero(counts)
    if cells.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    n_try = counts[cells] * tries + 8
    owner = np.repeat(cells, n_try)
    y0 = np.array([boxes[c - 1][0].start for c in cells])
    y1 = np.array([boxes[c - 1][0].stop for c in cells])
    x0 = np.array([boxes[c - 1][1].start for c in cells])
    x1 = np.array([boxes[c - 1][1].stop for c in cells])
    j = np.repeat(np.arange(cells.size), n_try)
    ys = (y0[j] + rng.random(owner.size) * (y1 - y0)[j]).astype(np.int64)
    xs = (x0[j] + rng.random(owner.size) * (x1 - x0)[j]).astype(np.int64)
    hit = region[ys, xs] == owner
    # keep the first counts[c] hits of each cell
    rank = np.cumsum(hit)
    start = np.repeat(np.r_[0, rank[np.cumsum(n_try)[:-1] - 1]], n_try)
    keep = hit & (rank - start <= counts[owner])
    return owner[keep], ys[keep], xs[keep]


def _spots(
    shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, peaks: np.ndarray, sigma: float
) -> np.ndarray:
    """Gaussian spots of width ``sigma`` and the given peak heights."""
    img = np.zeros(shape, np.float32)
    np.add.at(img, (ys, xs), (peaks * 2 * math.pi * sigma**2).astype(np.float32))
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _distances(lay: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance to the nucleus outline (inside, outside) and to the cell outline (inside)."""
    nuc = lay.nuc.view(np.uint8)
    d_in = cv2.distanceTransform(nuc, cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform(1 - nuc, cv2.DIST_L2, 3)
    lab = lay.lab
    edge = np.zeros(lab.shape, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    d_edge = cv2.distanceTransform(((lab > 0) & ~edge).view(np.uint8), cv2.DIST_L2, 3)
    return d_in, d_out, d_edge


def _render(rng: np.random.Generator, lay: _Layout, labels: dict[int, list[int]]) -> np.ndarray:
    """The four channels (float, about 0..1) of a laid-out field with the given cell labels."""
    lab = lay.lab
    shape = lab.shape
    size = shape[0]
    s = size / 256
    n = len(lay.cx) - 1
    cell = lab > 0
    nuc = lay.nuc
    cyto = cell & ~nuc
    d_in, d_out, d_edge = _distances(lay)
    b, ext = lay.b[lab], lay.ext[lab]

    def gains(lo: float, hi: float) -> np.ndarray:
        g = np.zeros(n + 1, np.float32)
        g[1:] = rng.uniform(lo, hi, n)
        return g

    # blue: textured nuclei with soft edges and darker nucleoli
    nucleoli_n = np.where(np.arange(n + 1) > 0, rng.integers(2, 5, n + 1), 0)
    deep = np.where(nuc & (d_in >= 0.3 * b), lab, 0)
    owner, ys, xs = _sample_points(rng, deep, lay.boxes, nucleoli_n)
    nucleoli_sigma = 0.22 * float(np.median(lay.b[1:])) if n else 1.0
    nucleoli = _spots(shape, ys, xs, rng.uniform(0.7, 1.0, owner.size), nucleoli_sigma)
    soft = np.clip((1 - lay.dnuc) * lay.b[lab] / 1.5, 0, 1) * cell
    blue = gains(0.45, 1.0)[lab] * soft * (0.8 + 0.2 * _noise(rng, shape, 2 * s))
    blue *= 1 - 0.45 * np.clip(nucleoli, 0, 1)

    # red: gently curved microtubules radiating from the nucleus, about 4 px apart at the cell's
    # edge, broken into segments of varying brightness, over a faint finer mesh
    dx = np.arange(size, dtype=np.float32)[None, :] - lay.cx[lab]
    dy = np.arange(size, dtype=np.float32)[:, None] - lay.cy[lab]
    reach = np.sqrt(lay.a * lay.b) + lay.ext
    n_fil = np.round(2 * math.pi * reach / (rng.uniform(3.5, 5.0, n + 1) * s)).astype(np.float32)
    phase = rng.random(n + 1).astype(np.float32)
    u = n_fil[lab] * (np.arctan2(dy, dx) / (2 * math.pi)) + phase[lab]
    u += 0.7 * _noise(rng, shape, 16 * s)
    # lines closer than ~3 px (near the centre) would alias into moire: fade them out
    spacing = np.hypot(dx, dy) * (2 * math.pi) / n_fil[lab]
    visible = np.clip((spacing - 3) / 3, 0, 1)
    segments = np.clip(0.6 + 0.5 * _noise(rng, shape, 6 * s), 0, 1)
    radial = _ridges(u - np.round(u), 0.14) * segments * visible
    mesh = _ridges(_noise(rng, shape, 3 * s), 0.2)
    fibres = np.maximum(radial, 0.4 * mesh)
    red = gains(0.5, 1.0)[lab] * (0.12 + 0.88 * fibres) * np.where(nuc, 0.25, 1.0) * cell

    # yellow: reticular ER, densest around the nucleus and continuous with its envelope
    reticulum = 0.3 + 0.7 * _ridges(_noise(rng, shape, 3 * s), 0.45)
    perinuclear = np.exp(-d_out / (0.45 * ext))
    yellow = gains(0.5, 1.0)[lab] * reticulum * np.where(nuc, 0.12, perinuclear) * cell

    # green: each class draws its pattern only in the cells that carry it
    cell_gain = gains(0.45, 1.0) * rng.uniform(0.6, 1.0)
    has = {k: np.zeros(n + 1, bool) for k in PATTERN_CLASSES}
    for c, cls in labels.items():
        for k in cls:
            if k != NEGATIVE:
                has[k][c] = True
    green = 0.04 * cell * (0.7 + 0.3 * _noise(rng, shape, 8 * s))  # dim background, Negative

    def masked(k: int, pattern: np.ndarray) -> np.ndarray:
        return np.where(has[k], cell_gain, 0).astype(np.float32)[lab] * pattern

    def spots(k: int, region: np.ndarray, lo: int, hi: int, sigma: float) -> np.ndarray:
        counts = np.where(has[k], rng.integers(lo, hi + 1, n + 1), 0)
        owner, ys, xs = _sample_points(rng, region, lay.boxes, counts)
        # small spots must stand out even in dim cells: brighter than the fills, saturating
        peaks = np.minimum(1.7 * cell_gain[owner], 1.2) * rng.uniform(0.75, 1.0, owner.size)
        return _spots(shape, ys, xs, peaks, sigma)

    if has[NUCLEOPLASM].any():
        green += masked(NUCLEOPLASM, soft * (0.8 + 0.2 * _noise(rng, shape, 3 * s)))
    if has[NUCLEAR_MEMBRANE].any():
        # the envelope: a thin ring on the outermost pixels of the nucleus
        rim = np.exp(-(((d_in - d_out - 1.2 * s) / (1.2 * s)) ** 2)) * cell
        green += masked(NUCLEAR_MEMBRANE, rim)
    if has[NUCLEOLI].any():
        bright = np.minimum(1.5 * cell_gain, 1.0)
        green += np.where(has[NUCLEOLI], bright, 0)[lab] * np.clip(nucleoli * 1.4, 0, 1)
    if has[NUCLEAR_SPECKLES].any():
        speck = np.clip(1.6 * (_noise(rng, shape, 1.6 * s) - 0.6), 0, 1)
        green += masked(NUCLEAR_SPECKLES, (0.12 + speck) * soft)
    if has[NUCLEAR_BODIES].any():
        inner = np.where(nuc & (d_in >= 1.5 * s), lab, 0)
        green += spots(NUCLEAR_BODIES, inner, 3, 7, 1.4 * s)
    if has[ER].any():
        green += masked(ER, yellow * 1.4)
    if has[MICROTUBULES].any():
        green += masked(MICROTUBULES, red * 1.3)
    if has[CENTROSOME].any():
        band = np.where(cyto & (d_out >= 1.5 * s) & (d_out <= 5 * s), lab, 0)
        green += spots(CENTROSOME, band, 1, 2, 1.4 * s)
    if has[PLASMA_MEMBRANE].any():
        rim = np.exp(-((d_edge / (1.4 * s)) ** 2)) * cell
        green += masked(PLASMA_MEMBRANE, rim * (0.75 + 0.25 * _noise(rng, shape, 6 * s)))
    if has[MITOCHONDRIA].any():
        worms = _ridges(_noise(rng, shape, 4 * s), 0.3) * (_noise(rng, shape, 6 * s) > 0.1)
        near = np.exp(-d_out / (0.6 * ext))
        green += masked(MITOCHONDRIA, worms * (0.3 + 0.7 * near) * cyto)
    if has[AGGRESOME].any():
        band = np.where(cyto & (d_out >= 0.25 * b) & (d_out <= 0.6 * b + 2 * s), lab, 0)
        sigma = 0.35 * float(np.median(lay.b[1:]))
        blob = np.clip(1.5 * spots(AGGRESOME, band, 1, 1, sigma), 0, 1.2)
        green += blob * (0.8 + 0.2 * _noise(rng, shape, sigma)) * cell
    if has[CYTOSOL].any():
        fill = np.where(nuc, 0.1, 0.7) * cell * (0.85 + 0.15 * _noise(rng, shape, 4 * s))
        green += masked(CYTOSOL, cv2.GaussianBlur(fill.astype(np.float32), (0, 0), 0.8 * s))
    if has[VESICLES].any():
        green += spots(VESICLES, np.where(cyto, lab, 0), 12, 35, 0.9 * s)

    return np.stack([red, green, blue, yellow], axis=-1)


def make_field(rng: np.random.Generator, size: int) -> SynthField:
    """One synthetic field of ``size`` x ``size`` pixels.

    Parameters
    ----------
    rng : generator; the field is a pure function of its state.
    size : side in pixels, at least 128 (need not be a multiple of 32).

    Returns
    -------
    SynthField with the RGBY image, the true cell mask and per-cell labels.

    Examples
    --------
    >>> f = make_field(np.random.default_rng(0), 256)
    >>> f.image.shape, f.mask.dtype
    ((256, 256, 4), dtype('uint16'))
    """
    if int(size) < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    size = int(size)
    lay = _layout(rng, size)
    n = len(lay.cx) - 1
    labels = _draw_labels(rng, n)
    channels = _render(rng, lay, labels)
    # per-channel exposure, camera offset and read noise
    exposure = rng.uniform(0.6, 1.0, 4).astype(np.float32) * 255
    channels *= exposure
    channels += rng.uniform(1, 6, 4).astype(np.float32)
    channels += rng.standard_normal(channels.shape, dtype=np.float32) * 1.5
    image = np.clip(channels, 0, 255).astype(np.uint8)
    image_labels = sorted({k for cls in labels.values() for k in cls})
    return SynthField(image=image, mask=lay.lab, cell_labels=labels, image_labels=image_labels)


# --------------------------------------------------------------------------------------------
# Data set on disk
# --------------------------------------------------------------------------------------------


def field_id(seed: int, index: int) -> str:
    """Id of field ``index`` of the set made with ``seed``."""
    return f"synth-{seed}-{index:05d}"


def field_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of field ``index``: depends on (seed, index) only, not on the set size."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


OUTPUT_ENTRIES = ("images", "masks", "train.csv", "solution.csv", "cells.csv")


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output '{out}' is a file; give a folder path (new or empty)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"output folder '{out}' is not empty; choose another folder or pass --overwrite"
        )


def _partial_dir(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` where the set is built before it is moved in."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"cannot create the output beside '{out}' ({exc.strerror}); choose a writable folder"
        ) from exc
    return tmp


def _install(tmp: Path, out: Path) -> None:
    """Move the finished set into ``out``, replacing only the entries a synthetic set has."""
    if not out.exists():
        tmp.rename(out)
        return
    for name in OUTPUT_ENTRIES:
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        (tmp / name).rename(old)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthOptions:
    """What a synthetic set holds (:func:`synthesize`)."""

    n_images: int = option(20, "Number of fields.", min=1)
    size: int = option(512, "Side of each square field in pixels.", min=MIN_SIZE)
    seed: int = option(0, "Random seed (same seed, same bytes).", min=0)
    bit_depth: int = option(8, "PNG bit depth: 8 or 16.", choices=(8, 16))

    def __post_init__(self) -> None:
        validate(self)


def synthesize(
    out: str | Path,
    options: SynthOptions = SynthOptions(),
    *,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> SynthSummary:
    """Write a synthetic HPA-like data set with per-cell ground truth to the folder ``out``.

    Writes ``images/<id>_{red,green,blue,yellow}.png``, ``masks/<id>.png`` (uint16 cell ids),
    ``train.csv`` (``ID,Label``: union of the cell labels), ``solution.csv`` (ground truth in the
    competition format, one ``label mask`` pair per cell and label) and ``cells.csv``
    (``image_id,cell_id,labels``). The set is built beside ``out`` and moved in when complete.

    Parameters
    ----------
    out : folder to create (or an empty one; a non-empty one only with ``overwrite``).
    options : ``n_images`` (ids ``synth-<seed>-<index:05d>``), ``size`` (side of each square
        field in pixels, >= 128), ``seed`` (the same seed gives byte-identical files) and
        ``bit_depth`` (8 or 16: 16-bit PNGs hold the 8-bit values times 257).
    **overrides : fields of ``options`` to replace (``n_images=4``).
    overwrite : replace the synthetic-set entries of a non-empty ``out``.
    progress : show a progress bar.

    Raises
    ------
    OutputError
        ``out`` is a file, or a non-empty folder and ``overwrite`` is false.
    """
    options = merged(SynthOptions, options, overrides)
    n_images, size, seed, bit_depth = (
        options.n_images,
        options.size,
        options.seed,
        options.bit_depth,
    )
    out = Path(out)
    _check_output(out, overwrite)
    tmp = _partial_dir(out)
    start = time.perf_counter()
    train_rows, cell_rows = ["ID,Label"], ["image_id,cell_id,labels"]
    solution_rows = ["ID,ImageWidth,ImageHeight,PredictionString"]
    class_counts = np.zeros(NUM_CLASSES, np.int64)
    n_cells = 0
    try:
        image_store, mask_store = Store(tmp / "images"), Store(tmp / "masks")
        for index in track(range(n_images), f"synth {n_images} fields", enabled=progress):
            fid = field_id(seed, index)
            f = make_field(field_rng(seed, index), size)
            image = f.image if bit_depth == 8 else f.image.astype(np.uint16) * 257
            images.write_field(image_store, fid, image)
            images.write_mask(mask_store, fid, f.mask)
            strings = encode_instance_mask(f.mask)
            pairs = [f"{k} {strings[c]}" for c, cls in f.cell_labels.items() for k in cls]
            train_rows.append(f"{fid},{'|'.join(map(str, f.image_labels))}")
            solution_rows.append(f"{fid},{size},{size},{' '.join(pairs)}")
            for c, cls in f.cell_labels.items():
                cell_rows.append(f"{fid},{c},{'|'.join(map(str, cls))}")
                class_counts[cls] += 1
            n_cells += len(f.cell_labels)
        for name, rows in (
            ("train.csv", train_rows),
            ("solution.csv", solution_rows),
            ("cells.csv", cell_rows),
        ):
            (tmp / name).write_text("\n".join(rows) + "\n", encoding="ascii")
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SynthSummary(
        out=out,
        n_images=n_images,
        n_cells=n_cells,
        size=size,
        bit_depth=bit_depth,
        seconds=time.perf_counter() - start,
        cell_class_counts={k: int(v) for k, v in enumerate(class_counts) if v},
    )
