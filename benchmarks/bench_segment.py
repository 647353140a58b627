"""Segmentation speed: hpa-unet presets stage by stage, the whole pipeline, the classical segmenter.

Rows give seconds per field and fields per second, on CPU (the GPU script of issue "dataset
scale" covers the GPU). Networks have random weights: their cost does not depend on them. The
label rows restore HPA-network-like maps of the real Kaggle field (drawn from its HPA mask) as
each preset does and run ``label_cell`` on them. Pre-processing, label and classical rows run
on one thread; the network rows use ``--threads``. ``--pipeline`` also times the whole
segmenter on four fields with and without a CPU worker pool (pool overlapping the networks).

    python benchmarks/bench_segment.py [--repeats 3] [--quick] [--threads 2] [--pipeline]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from hpasc.io.images import read_field, read_mask
from hpasc.io.store import Store
from hpasc.segment.classical import segment_classical
from hpasc.segment.dpn_unet import DPNUnet
from hpasc.segment.evaluate import match_counts
from hpasc.segment.hpa_unet import HpaUnetSegmenter
from hpasc.segment.presets import Box, get_preset, label_field
from hpasc.synth import make_field
from machine import cpu_description

REAL = Path(__file__).resolve().parents[2] / "shared/data/hpa-real"
KAGGLE_ID = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
PRESETS = ("hpacellseg", "pfcell-2021", "fast")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def probability_maps(mask: np.ndarray, blue: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """HPA-network-like softmax outputs (3, side, side) for a known cell mask.

    Cell body = the blurred cell mask, cell border = a band along borders between touching
    cells, nucleus body = the normalised blurred blue channel.
    """
    small = cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST)
    body = cv2.GaussianBlur((small > 0).astype(np.float32), (0, 0), 1.5)
    shifted = np.zeros_like(small)
    shifted[:, 1:] = small[:, :-1]
    touching = (small != shifted) & (small > 0) & (shifted > 0)
    border = cv2.GaussianBlur(cv2.dilate(touching.astype(np.float32), np.ones((3, 3))), (0, 0), 1)
    b = cv2.resize(blue.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    b = cv2.GaussianBlur(b, (0, 0), 2)
    nucleus = np.clip((b / max(float(b.max()), 1e-6) - 0.15) / 0.3, 0, 1)

    def softmax_like(fg: np.ndarray, edge: np.ndarray) -> np.ndarray:
        edge = np.minimum(edge, 1 - fg * 0.5)
        return np.stack([1 - np.maximum(fg, edge), edge, fg]).astype(np.float32)

    return softmax_like(nucleus, np.zeros_like(nucleus)), softmax_like(body, border)


def real_fields() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGBY field, HPA mask) of the three shared real fields with masks."""
    out = []
    for sub in ("kaggle-train", "kaggle-train-more"):
        folder = REAL / sub
        for mask in sorted((folder / "masks").glob("*.png")):
            field_id = mask.stem
            image = read_field(Store(folder / "images"), field_id)
            out.append((field_id, image, read_mask(Store(folder / "masks"), field_id)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument("--quick", action="store_true", help="one repeat per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the networks")
    parser.add_argument("--pipeline", action="store_true", help="also time the whole segmenter")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rows: list[tuple[str, float]] = []

    fields = real_fields()
    kaggle, kaggle_mask = fields[0][1], fields[0][2]
    for name in PRESETS:
        preset = get_preset(name)
        seconds = best_of(lambda p=preset: p.prepare(kaggle, False), repeats)
        rows.append((f"pre-processing {name}, 2048² field (1 thread)", seconds))

    # Label step per preset on 512² network outputs (a 2048² field's grid in every preset);
    # fast at s = 0.5 labels the same 1024² maps as pfcell-2021 at s = 0.5 on a square field.
    nuclei_p, cell_p = probability_maps(kaggle_mask, kaggle[..., 2], 512)
    box = Box(0, 0, 512, 512)
    shape = kaggle.shape[:2]
    for name, scale in (("hpacellseg", None), ("pfcell-2021", 1.0), ("pfcell-2021", 0.5)):
        preset = get_preset(name, label_scale=scale)
        seconds = best_of(
            lambda p=preset, n=nuclei_p, c=cell_p, b=box: label_field(p, n, c, b, shape),
            repeats,
        )
        cells = label_field(preset, nuclei_p, cell_p, box, shape).cells
        m, n_pred, n_true = match_counts(cells, kaggle_mask)
        grid = preset.restore(nuclei_p, cell_p, box, shape)[0].shape[0]
        rows.append(
            (f"restore + label_cell {name}, s = {scale or 1.0} ({grid}² maps; "
             f"{m}/{n_true} HPA cells, {n_pred} found) (1 thread)", seconds)
        )  # fmt: skip

    torch.set_num_threads(args.threads)
    model = DPNUnet().eval()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
        for batch in (1, 2):
            for side in (512, 768):
                x = torch.zeros(batch, 3, side, side)
                start = time.perf_counter()
                model(x)
                seconds = (time.perf_counter() - start) / batch
                rows.append(
                    (f"one network, {side}² input, batch {batch} ({args.threads} threads)", seconds)
                )

    if args.pipeline:
        images = [f[1] for f in fields] + [kaggle]
        for workers in (1, 2):
            for name in ("hpacellseg", "pfcell-2021"):
                seg = HpaUnetSegmenter(
                    model, model, preset=name, batch_size=2, workers=workers, device="cpu"
                )
                with seg:
                    seg.segment_batch(images[:1])
                    start = time.perf_counter()
                    seg.segment_batch(images)
                    seconds = (time.perf_counter() - start) / len(images)
                rows.append(
                    (f"hpa-unet {name}, 4 fields, batch 2, {workers} worker(s) "
                     f"({args.threads} torch threads)", seconds)
                )  # fmt: skip

    torch.set_num_threads(1)
    for field_id, image, mask in fields:
        seconds = best_of(lambda im=image: segment_classical(im), repeats)
        m, n_pred, n_true = match_counts(segment_classical(image).cells, mask)
        f1 = 2 * m / (n_pred + n_true)
        rows.append(
            (f"classical, real field {field_id[:8]} (F1 {f1:.3f}: {m}/{n_true}, {n_pred} found)",
             seconds)
        )  # fmt: skip
    synth = make_field(np.random.default_rng(0), 2048)
    seconds = best_of(lambda: segment_classical(synth.image), repeats)
    m, n_pred, n_true = match_counts(segment_classical(synth.image).cells, synth.mask)
    rows.append(
        (f"classical, synthetic 2048² (F1 {2 * m / (n_pred + n_true):.3f}: {m}/{n_true})", seconds)
    )

    print(
        f"machine: {cpu_description()}; torch {torch.__version__}, OpenCV {cv2.__version__}; "
        f"best of {repeats} (networks and pipeline: 1 run)"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'case'.ljust(width)} | {'s / field':>10} | {'fields / s':>10} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 12}|")
    for case, seconds in rows:
        print(f"| {case.ljust(width)} | {seconds:>10.3f} | {1 / seconds:>10.2f} |")


if __name__ == "__main__":
    main()
