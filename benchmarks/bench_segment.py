"""Segmentation speed on one core: classical segmenter, label_cell, HPA U-Net forward on CPU.

Baseline (named in the table): the HPA U-Net pipeline on the same core, i.e. two network
forwards (nucleus and cell model, random weights: the cost does not depend on them) plus
``label_cell`` at s = 0.5, per 2048² field. Rows give seconds per field and the speed-up over
that baseline. One run, prints a table; ``--quick`` times fewer repeats.

    python benchmarks/bench_segment.py [--repeats 5] [--quick]
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
from hpasc.segment.evaluate import match_f1
from hpasc.segment.hpa_unet import restore_maps
from hpasc.segment.label_cell import label_cell
from hpasc.synth import make_field
from machine import cpu_description

REAL = Path(__file__).resolve().parents[2] / "shared/data/hpa-real/kaggle-train"
KAGGLE_ID = "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def probability_maps(mask: np.ndarray, blue: np.ndarray, side: int = 512) -> tuple[np.ndarray, ...]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best is kept)")
    parser.add_argument("--quick", action="store_true", help="one repeat per row")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    # One core: the budget of the issue (<= 0.5 s per 2048² field on one core).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    kaggle = read_field(Store(REAL / "images"), KAGGLE_ID)
    truth = read_mask(Store(REAL / "masks"), KAGGLE_ID)
    synth = make_field(np.random.default_rng(0), 2048)
    rows: list[tuple[str, float, str]] = []

    t_kaggle = best_of(lambda: segment_classical(kaggle), repeats)
    t_synth = best_of(lambda: segment_classical(synth.image), repeats)
    f1_kaggle = match_f1(segment_classical(kaggle).cells, truth)[0]
    f1_synth = match_f1(segment_classical(synth.image).cells, synth.mask)[0]

    nuclei_p, cell_p = probability_maps(synth.mask, synth.image[..., 2])
    box = (0, 0, 512, 512)
    label_times = {}
    for s in (0.5, 1.0):
        maps = restore_maps(nuclei_p, cell_p, box, synth.mask.shape, s)
        label_times[s] = best_of(lambda maps=maps, s=s: label_cell(*maps, scale=s), repeats)
        n_cells = int(label_cell(*maps, scale=s)[1].max())
        rows.append(
            (f"label_cell s = {s} ({maps[0].shape[0]}² maps, {n_cells} cells)", label_times[s], "")
        )

    model = DPNUnet().eval()
    x = torch.zeros(1, 3, 512, 512)
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
        start = time.perf_counter()
        model(x)
        t_forward = time.perf_counter() - start
    baseline = 2 * t_forward + label_times[0.5]
    rows.insert(0, ("hpa-unet forward, one model, 512² input (CPU)", t_forward, ""))
    rows.insert(
        0, ("BASELINE hpa-unet per field: 2 forwards + label_cell s = 0.5", baseline, "1.0×")
    )
    rows.append(
        (f"classical, real Kaggle field 2048² (F1 {f1_kaggle:.3f} vs HPA mask)", t_kaggle, "")
    )
    rows.append((f"classical, synthetic field 2048² (F1 {f1_synth:.3f} vs truth)", t_synth, ""))

    print(
        f"machine: {cpu_description()}; torch {torch.__version__}, OpenCV {cv2.__version__}; one thread "
        f"(torch.set_num_threads(1), cv2.setNumThreads(1)); best of {repeats} (forward: 1 run)"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'case'.ljust(width)} | {'s / field':>10} | {'vs baseline':>14} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 16}|")
    for case, seconds, ratio in rows:
        ratio = ratio or f"{baseline / seconds:.1f}× faster"
        print(f"| {case.ljust(width)} | {seconds:>10.3f} | {ratio:>14} |")


if __name__ == "__main__":
    main()
