"""Cell crops: hpasc against the reference algorithm, and peak memory of one worker.

Baseline (implemented here, as in the method spec §2.4): for every cell, re-read and re-decode
the four channel PNGs from the store, mask the full image per colour, crop, resize. hpasc
decodes the field once and works inside each cell's bounding box. Both run in this process on
the same synthetic field; the outputs are checked to be identical. One run, prints a table.

    python benchmarks/bench_crops.py [--size 2048] [--memory-size 3072]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

from machine import cpu_description

CHANNELS = ("red", "green", "blue", "yellow")


def synthetic_field(side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGBY uint8 field with about 25 cells per 2048² (jittered grid, bounded Voronoi cells)."""
    rng = np.random.default_rng(seed)
    per_axis = max(1, round(5 * side / 2048))
    step = side / per_axis
    grid = (np.arange(per_axis) + 0.5) * step
    seeds = np.array([(y, x) for y in grid for x in grid]) + rng.uniform(
        -0.2 * step, 0.2 * step, (per_axis**2, 2)
    )
    seeds = np.clip(seeds.round().astype(int), 0, side - 1)
    marks = np.zeros((side, side), dtype=np.uint16)
    marks[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    dist, (iy, ix) = ndimage.distance_transform_edt(marks == 0, return_indices=True)
    radius = rng.uniform(0.35, 0.6, len(seeds) + 1) * step
    mask = marks[iy, ix]
    mask[dist > radius[mask]] = 0
    nucleus = dist < 0.3 * radius[mask]

    def texture(scale: float) -> np.ndarray:
        noise = rng.normal(size=(side // 8, side // 8)).astype(np.float32)
        noise = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 2), (side, side))
        return np.clip(scale * (noise - noise.min()) / np.ptp(noise), 0, 255)

    image = np.zeros((side, side, 4), dtype=np.uint8)
    cells = mask > 0
    for c, scale in enumerate((200, 150, 60, 180)):
        plane = texture(scale) * (0.3 + 0.7 * cells) + rng.uniform(0, 20, (side, side))
        if c == 2:
            plane += 150 * nucleus
        image[..., c] = np.clip(plane, 0, 255).astype(np.uint8)
    return image, mask


def reference_crops(
    load_channels: Callable[[], list[np.ndarray]], mask: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference algorithm: per cell, load the 4 channels again and mask the full image."""
    crops, ids = [], []
    half = size // 2
    for k in range(1, int(mask.max()) + 1):
        cell = mask == k
        if not cell.any():
            continue
        channels = load_channels()  # re-read and re-decoded for every cell
        ys, xs = np.where(cell)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        blue = channels[2][ys, xs].astype(np.float64)
        weights = blue / (blue.sum() + 1e-6)
        cy, cx = int((weights * ys).sum()), int((weights * xs).sum())
        planes = []
        for img in channels:
            masked = img * cell
            padded = np.pad(masked, size)
            top, left = cy - half + 1 + size, cx - half + 1 + size
            planes.append(padded[top : top + size, left : left + size])
            box = masked[y0 : y1 + 1, x0 : x1 + 1]
            h, w = box.shape
            r = size / max(h, w)
            nh, nw = int(h * r), int(w * r)
            whole = np.zeros((size, size), dtype=np.uint8)
            oy, ox = (size - nh) // 2, (size - nw) // 2
            whole[oy : oy + nh, ox : ox + nw] = cv2.resize(box, (nw, nh))
            planes.append(whole)
        crops.append(np.stack(planes))
        ids.append(k)
    return np.array(crops, dtype=np.uint8).reshape(-1, 8, size, size), np.array(ids, np.int32)


def _write_field(folder: str, field_id: str, image: np.ndarray, mask: np.ndarray) -> None:
    from hpasc.io.images import write_field, write_mask
    from hpasc.io.store import Store

    write_field(Store(os.path.join(folder, "images")), field_id, image)
    write_mask(Store(os.path.join(folder, "masks")), field_id, mask)


def _memory_child(folder: str, field_id: str, size: int) -> None:
    """One worker's crop of one field (read + crop + table + compress), in a fresh process."""
    import tracemalloc

    from hpasc import prepare
    from hpasc.io import images as _images  # noqa: F401 - imported before the baseline RSS

    images, masks = os.path.join(folder, "images"), os.path.join(folder, "masks")
    before = _status_kib("VmRSS")
    _reset_peak()
    tracemalloc.start()
    record, cells = prepare._crop_one(images, masks, None, size, field_id)
    traced = tracemalloc.get_traced_memory()[1]
    peak = _status_kib("VmHWM")
    stats = {"rss_kib": peak, "rss_before_kib": before, "traced": traced, "cells": len(cells)}
    print(json.dumps(stats))


def _status_kib(key: str) -> int:
    """VmRSS / VmHWM of this process from /proc (Linux); ru_maxrss elsewhere.

    ru_maxrss alone would not do: Linux carries the parent's peak across fork + exec.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the timed field")
    parser.add_argument("--memory-size", type=int, default=3072, help="side of the memory field")
    parser.add_argument("--crop", type=int, default=192, help="crop side S")
    args = parser.parse_args()

    from hpasc.io.images import read_channel, read_field, read_mask
    from hpasc.io.store import Store
    from hpasc.prepare import crop_cells

    field_id = "bench"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image, mask = synthetic_field(args.size)
        _write_field(tmp, field_id, image, mask)
        images, masks = Store(os.path.join(tmp, "images")), Store(os.path.join(tmp, "masks"))
        n_cells = len(np.unique(mask)) - 1

        start = time.perf_counter()
        stored_mask = read_mask(masks, field_id)
        ref, ref_ids = reference_crops(
            lambda: [read_channel(images, field_id, c) for c in CHANNELS], stored_mask, args.crop
        )
        t_ref = time.perf_counter() - start

        start = time.perf_counter()
        ours, our_ids = crop_cells(
            read_field(images, field_id), read_mask(masks, field_id), args.crop
        )
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        crop_cells(image, mask, args.crop)
        t_arrays = time.perf_counter() - start
        if not (np.array_equal(ref_ids, our_ids) and np.array_equal(ref, ours)):
            raise SystemExit("hpasc crops differ from the reference algorithm")

        rows += [
            (
                f"reference: re-decode 4 PNGs per cell ({args.size}², {n_cells} cells)",
                f"{n_cells / t_ref:.1f} cells/s",
                "1.0×",
            ),
            (
                "hpasc crop_cells: decode once + crop",
                f"{n_cells / t_ours:.1f} cells/s",
                f"{t_ref / t_ours:.1f}×",
            ),
            (
                "hpasc crop_cells: crop only (arrays in memory)",
                f"{n_cells / t_arrays:.1f} cells/s",
                f"{t_ref / t_arrays:.1f}×",
            ),
        ]

    with tempfile.TemporaryDirectory() as tmp:
        image, mask = synthetic_field(args.memory_size, seed=1)
        _write_field(tmp, field_id, image, mask)
        field_mib = image.nbytes / 2**20
        del image, mask
        code = (
            f"import sys; sys.argv=['x']; from bench_crops import _memory_child; "
            f"_memory_child({tmp!r}, {field_id!r}, {args.crop})"
        )
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), *sys.path]),
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        ).stdout
        mem = json.loads(out.strip().splitlines()[-1])
        rows += [
            (
                f"one worker, {args.memory_size}² field ({mem['cells']} cells, RGBY "
                f"{field_mib:.0f} MiB): peak RSS",
                f"{mem['rss_kib'] / 1024:.0f} MiB",
                f"+{(mem['rss_kib'] - mem['rss_before_kib']) / 1024:.0f} MiB over imports",
            ),
            (
                "  same: peak of numpy/Python allocations (tracemalloc)",
                f"{mem['traced'] / 2**20:.0f} MiB",
                "",
            ),
        ]

    print(
        f"machine: {cpu_description()}; python {platform.python_version()}; crops S = {args.crop}; "
        "outputs identical to the reference"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'case'.ljust(width)} | {'result':>16} | {'vs reference':>20} |")
    print(f"|{'-' * (width + 2)}|{'-' * 18}|{'-' * 22}|")
    for case, value, ratio in rows:
        print(f"| {case.ljust(width)} | {value:>16} | {ratio:>20} |")


if __name__ == "__main__":
    main()
