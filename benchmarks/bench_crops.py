"""Cell crops, writes included: hpasc's crop step against the original's, and read throughput.

Baseline (implemented here, as the original's ``crop_and_resize_cell``, method spec §2.4 and the
crop archive of §1): for every cell, re-read and re-decode the four channel PNGs, mask the full
image per colour, crop, resize; the field's crops are Blosc-packed for the transfer to the main
process, which unpacks them and writes every cell Blosc-packed on its own into a zip
(``<id>_<k>.blosc``), then the instance-index pickle. hpasc: ``crop_set`` into a zip (decode once,
crop inside each bounding box, one ``.crops`` record per field with per-cell Zstandard blocks, the
cell table). Both run in this process on the same synthetic fields; the crops are checked
identical. Then training-time reads: cells/s through a DataLoader with 2 workers, for the
previous ``.npz`` records (streamed), ``.crops`` streamed, and ``.crops`` drawn uniformly.

    python benchmarks/bench_crops.py [--size 768] [--fields 4] [--memory-size 3072]

Blosc: python-blosc's ``pack_array`` defaults (pickle, blosclz level 9, byte shuffle), through
``numcodecs.Blosc``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

from machine import cpu_description

CHANNELS = ("red", "green", "blue", "yellow")


def synthetic_field(
    side: int, seed: int = 0, per_axis: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An RGBY uint8 field of ``per_axis``² cells (default: about 25 per 2048²; jittered grid,
    bounded Voronoi cells)."""
    rng = np.random.default_rng(seed)
    per_axis = per_axis or max(1, round(5 * side / 2048))
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


def _blosc():
    from numcodecs import Blosc

    return Blosc(cname="blosclz", clevel=9, shuffle=Blosc.SHUFFLE)


def pack_array(array: np.ndarray) -> bytes:
    """python-blosc ``pack_array`` with its defaults."""
    return _blosc().encode(pickle.dumps(array, pickle.HIGHEST_PROTOCOL))


def unpack_array(blob: bytes) -> np.ndarray:
    return pickle.loads(_blosc().decode(blob))


def original_crop_step(images, masks, field_ids: list[str], size: int, out_zip: str) -> None:
    """The original's crop step over ``field_ids``, writing its zip archive."""
    from hpasc.io.images import read_channel, read_mask

    instances = {}
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_STORED) as archive:
        for field_id in field_ids:
            mask = read_mask(masks, field_id)
            crops, ids = reference_crops(
                lambda f=field_id: [read_channel(images, f, c) for c in CHANNELS], mask, size
            )
            crops = unpack_array(pack_array(crops))  # worker → main process
            for k, crop in zip(ids.tolist(), crops, strict=True):
                archive.writestr(f"{field_id}_{k}.blosc", pack_array(crop))
            instances[field_id] = ids.tolist()
        archive.writestr("instance_indices_by_id.pkl", pickle.dumps(instances, -1))


def crop_ratio(
    side: int, n_fields: int, size: int = 192, per_axis: int = 5, repeats: int = 2
) -> dict:
    """Seconds per field of the original's crop step and of hpasc's, writes included (best of
    ``repeats`` interleaved runs of each)."""
    from hpasc.io.store import Store
    from hpasc.prepare import crop_set, read_crops

    ids = [f"field{i}" for i in range(n_fields)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, field_id in enumerate(ids):
            image, mask = synthetic_field(side, seed=i, per_axis=per_axis)
            _write_field(tmp, field_id, image, mask)
        images, masks = Store(os.path.join(tmp, "images")), Store(os.path.join(tmp, "masks"))
        n_cells = sum(len(np.unique(_read_mask(masks, i))) - 1 for i in ids)

        t_ref = t_ours = float("inf")
        out = os.path.join(tmp, "hpasc.zip")
        for r in range(repeats):  # interleaved, best of each: load on a shared machine is bursty
            start = time.perf_counter()
            original_crop_step(images, masks, ids, size, os.path.join(tmp, "original.zip"))
            t_ref = min(t_ref, (time.perf_counter() - start) / n_fields)
            start = time.perf_counter()
            crop_set(images, masks, out, size=size, progress=False, overwrite=r > 0)
            t_ours = min(t_ours, (time.perf_counter() - start) / n_fields)

        with zipfile.ZipFile(os.path.join(tmp, "original.zip")) as archive:
            for field_id in ids:
                crops, cell_ids = read_crops(out, field_id)
                for k, crop in zip(cell_ids.tolist(), crops, strict=True):
                    if not np.array_equal(
                        unpack_array(archive.read(f"{field_id}_{k}.blosc")), crop
                    ):
                        raise SystemExit(f"hpasc crop {field_id}/{k} differs from the original's")
        sizes = (os.path.getsize(os.path.join(tmp, "original.zip")), os.path.getsize(out))
    return {
        "side": side,
        "fields": n_fields,
        "cells_per_field": n_cells / n_fields,
        "original_s": t_ref,
        "hpasc_s": t_ours,
        "ratio": t_ref / t_ours,
        "original_mib": sizes[0] / 2**20,
        "hpasc_mib": sizes[1] / 2**20,
    }


def _read_mask(store, field_id):
    from hpasc.io.images import read_mask

    return read_mask(store, field_id)


class _NpzStream:
    """The previous format's training read: each field's ``.npz`` (deflate) record decoded
    whole, cells yielded one by one (as ``CropStream`` did), workers splitting the fields."""

    def __new__(cls, folder: str, ids: list[str]):
        import torch

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                w, n = (info.id, info.num_workers) if info else (0, 1)
                for field_id in ids[w::n]:
                    with np.load(os.path.join(folder, f"{field_id}.npz")) as rec:
                        crops = rec["crops"]
                    for row in range(len(crops)):
                        yield torch.from_numpy(crops[row].copy()), row

        return Stream()


def read_throughput(n_fields: int = 48, side: int = 768, size: int = 192, workers: int = 2) -> dict:
    """Cells/s into a DataLoader (``workers`` workers, batch 128) per format and sampling."""
    import torch

    from hpasc.data.crops import CropStream, build_cell_set, stream_loader, uniform_loader
    from hpasc.io.store import Store
    from hpasc.prepare import crop_cells, write_crops

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        image, mask = synthetic_field(side, seed=0, per_axis=5)
        crops, ids = crop_cells(image, mask, size)
        store = Store(os.path.join(tmp, "crops"))
        npz = os.path.join(tmp, "npz")
        os.makedirs(npz)
        fields = [f"f{i:03d}" for i in range(n_fields)]
        for field_id in fields:
            write_crops(store, field_id, crops, ids)
            np.savez_compressed(os.path.join(npz, f"{field_id}.npz"), crops=crops, cell_ids=ids)
        cells = build_cell_set(os.path.join(tmp, "crops"), fields, progress=False)
        loaders = {
            ".npz records (previous), streamed": torch.utils.data.DataLoader(
                _NpzStream(npz, fields), batch_size=128, num_workers=workers
            ),
            ".crops records, streamed": stream_loader(
                CropStream(cells, 128, train=True, num_workers=workers, buffer_size=512)
            ),
            ".crops records, uniform (random access)": uniform_loader(cells, 128, workers, 0),
        }
        for name, loader in loaders.items():
            for _ in loader:  # warm-up: page cache, worker start
                break
            start, seen = time.perf_counter(), 0
            for batch in loader:
                seen += len(batch[0])
            rates[name] = seen / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="side of the timed fields")
    parser.add_argument("--fields", type=int, default=12, help="timed fields")
    parser.add_argument("--memory-size", type=int, default=3072, help="side of the memory field")
    parser.add_argument("--crop", type=int, default=192, help="crop side S")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs, best kept")
    parser.add_argument("--no-reads", action="store_true", help="skip the read throughput")
    args = parser.parse_args()

    r = crop_ratio(args.size, args.fields, args.crop, repeats=args.repeats)
    rows = [
        (
            f"original: decode 4 PNGs per cell, blosc per cell into a zip "
            f"({args.size}², {r['cells_per_field']:.0f} cells)",
            f"{r['original_s'] * 1e3:.0f} ms/field",
            "1.0×",
        ),
        (
            "hpasc crop_set: decode once, crop, .crops record into a zip",
            f"{r['hpasc_s'] * 1e3:.0f} ms/field",
            f"{r['ratio']:.1f}×",
        ),
        (
            "archive size: original / hpasc",
            f"{r['original_mib']:.1f} / {r['hpasc_mib']:.1f} MiB",
            "",
        ),
    ]
    if not args.no_reads:
        for name, rate in read_throughput(size=args.crop).items():
            rows.append((f"training reads, 2 workers: {name}", f"{rate:.0f} cells/s", ""))

    field_id = "bench"
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
