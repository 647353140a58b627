"""Does the cell-level model help? CAM model alone, cell model alone, and their average.

Extends ``bench_weak_supervision.py`` (same synthetic data, same CAM config) with the second
model family of the method: synthesises HPA-like fields with per-cell ground truth, holds out a
stratified fifth of them, trains the image-level CAM model on K folds of the rest, joins its
out-of-fold cell predictions (``hpasc oof``), trains a cell-level crop classifier on those soft
labels, and scores on the held-out fields with the competition metric (mAP, IoU 0.6):

* the CAM model alone (mean of its K fold models, D4 TTA),
* the cell model alone (D4 TTA),
* their average (as the final ensemble of the method averages both families),

beside the weak-supervision baseline "every cell gets its field's image-level probability" and,
with ``--image-label-cell``, a cell model trained on the image labels broadcast to the cells
instead of soft labels (and its average with the CAM model).

    python benchmarks/bench_cell_level.py [--fields 160] [--cam-folds 2] [--image-label-cell] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_weak_supervision as ws  # noqa: E402  (the script this one extends)
from machine import cpu_description  # noqa: E402


def split_held_out(data: Path, seed: int, held_out_fold: int = 0, n_parts: int = 5):
    """Stratified split of the synthetic fields: one part held out, the rest for training.

    Writes ``train-fields.csv`` (labels of the training fields, for the CAM model's own folds)
    and ``bench-folds.csv`` (held-out fields in fold 0, training fields in fold 1, for the cell
    model, which thus validates on the held-out fields). Returns (training ids, held-out ids).
    """
    from hpasc.classes import read_labels
    from hpasc.data.folds import make_folds, write_folds

    labels = read_labels(data / "train.csv")
    parts = make_folds(labels, n_parts, seed)
    held = parts["fold"].to_numpy() == held_out_fold
    frame = labels.to_frame()
    frame[~held].to_csv(data / "train-fields.csv", index=False)
    write_folds(parts.assign(fold=(~held).astype(int)), data / "bench-folds.csv")
    ids = labels.ids
    return [i for i, h in zip(ids, held, strict=True) if not h], [
        i for i, h in zip(ids, held, strict=True) if h
    ]


def train_cam(args, data: Path, work: Path):
    """K CAM fold models on the training fields; their joined OOF table and their fold folders."""
    from hpasc.cells import write_table
    from hpasc.predict.oof import join_oof
    from hpasc.runconfig.image_level import load_image_level_config
    from hpasc.train.image_level import train_fold

    overrides = [f"data.root={data}", f"data.n_folds={args.cam_folds}"]
    if args.cam_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.cam_epochs}")
    cfg = load_image_level_config(args.cam_config, overrides)
    cfg.data.sources[0].labels = "train-fields.csv"
    run = work / "cam"
    folds = [train_fold(cfg, k, run, resume=True) for k in range(args.cam_folds)]
    oof_cells, _ = join_oof([run])
    write_table(oof_cells, data / "oof-cam.parquet")
    return folds, cfg


def train_cell(args, data: Path, work: Path, soft: bool):
    """The cell model on the training fields' crops (soft labels from the CAM OOF table, or the
    image labels); its validation fold is the held-out fields. Returns its held-out cell table."""
    import pandas as pd

    from hpasc.runconfig.cell_level import load_cell_level_config
    from hpasc.train.cell_level import train_fold

    overrides = [f"data.root={data}", "data.n_folds=2"]
    if args.cell_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.cell_epochs}")
    cfg = load_cell_level_config(args.cell_config, overrides)
    src = cfg.data.sources[0]
    src.folds = "bench-folds.csv"
    src.soft_labels = "oof-cam.parquet" if soft else None
    fold = train_fold(cfg, 0, work / ("cell" if soft else "cell-image-labels"), resume=True)
    return pd.read_parquet(fold / "valid_cells.parquet"), cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=160)
    p.add_argument("--size", type=int, default=256)
    p.add_argument(
        "--crop", type=int, default=48, help="crop side S (the reference: 192 of 768 px)"
    )
    p.add_argument(
        "--cam-folds", type=int, default=2, help="folds of the CAM model over the training fields"
    )
    p.add_argument("--cam-epochs", type=int, default=6, help="epochs of each CAM fold model")
    p.add_argument("--cell-epochs", type=int, default=None, help="default: the cell config's")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cam-config", default=str(HERE.parent / "configs/image-level/synth-256.yaml"))
    p.add_argument("--cell-config", default=str(HERE.parent / "configs/cell-level/synth-256.yaml"))
    p.add_argument(
        "--image-label-cell",
        action="store_true",
        help="also train a cell model on broadcast image labels (no soft labels)",
    )
    p.add_argument(
        "--work", default=None, help="keep data and runs here (default: a temporary folder)"
    )
    args = p.parse_args()

    import torch

    from hpasc.cells import average_tables, broadcast_image_table
    from hpasc.io.store import Store
    from hpasc.predict.base import PredictOptions
    from hpasc.predict.image_level import predict_fields
    from hpasc.prepare import crop_set
    from hpasc.synth import synthesize
    from hpasc.train.validation import read_solution

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work or tempfile.mkdtemp(prefix="hpasc-bench-cell-"))
    data = work / "data"
    times = {}
    t0 = time.perf_counter()
    if not (data / "train.csv").exists():
        synthesize(data, n_images=args.fields, size=args.size, seed=args.seed, progress=False)
    if not (data / "crops" / "cells.parquet").exists():
        crop_set(
            str(data / "images"),
            str(data / "masks"),
            str(data / "crops"),
            size=args.crop,
            progress=False,
        )
    train_ids, held_out = split_held_out(data, args.seed)
    times["synth + crops"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cam_folds, cam_cfg = train_cam(args, data, work)
    options = PredictOptions(progress=False)
    cam, images = predict_fields(
        cam_folds, str(data / "images"), str(data / "masks"), options, ids=held_out
    )
    times["CAM: train K folds + OOF + predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cell, cell_cfg = train_cell(args, data, work, soft=True)
    times["cell model: train + predict"] = time.perf_counter() - t0

    rows = [
        ("CAM model alone (mean of its folds)", cam),
        ("cell model alone (CAM OOF soft labels)", cell),
        ("average of CAM and cell model", average_tables([cam, cell])),
        ("baseline: CAM image-level prob. broadcast", broadcast_image_table(cam, images)),
    ]
    if args.image_label_cell:
        t0 = time.perf_counter()
        hard = train_cell(args, data, work, soft=False)[0]
        rows.append(("cell model on broadcast image labels", hard))
        rows.append(("average of CAM and that cell model", average_tables([cam, hard])))
        times["cell model (image labels)"] = time.perf_counter() - t0

    masks = Store(str(data / "masks"))
    fields = [(fid, masks) for fid in held_out]
    solution = read_solution(str(data / "solution.csv"))
    print(
        f"\ncell-level model on hpasc synth: {args.fields} fields of {args.size} px, {args.crop}-px crops; "
        f"{len(train_ids)} training / {len(held_out)} held-out fields ({len(cam)} held-out cells)"
    )
    print(
        f"CAM: {cam_cfg.model.arch}, {args.cam_folds} folds × {cam_cfg.trainer.max_epochs} epochs; "
        f"cell: {cell_cfg.model.arch}, {cell_cfg.trainer.max_epochs} epochs; TTA d4"
    )
    ws.score_rows(
        rows,
        fields,
        solution,
        "held-out fields scored with",
        (2, 0),
        "gain of the average over the CAM model alone",
        46,
    )
    print(
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; work folder {work}"
    )
    print(f"machine: {cpu_description()}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
