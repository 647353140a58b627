"""Does weak supervision work? CAM consistency vs "every cell gets its field's image label".

Synthesises HPA-like fields with per-cell ground truth (``hpasc.synth``), trains an image-level
CAM-consistency model (stage 1) on image labels only for the fields of four folds, predicts
the held-out fold's cells with the true masks (D4 TTA), and scores with the competition metric
(mAP, IoU 0.6) beside the baseline that gives every cell its field's image-level probabilities
(the same model's sigmoid of the mean CAM, broadcast to the cells). The oracle row broadcasts
the TRUE image labels: the best any image-level-only scoring can do.

    python benchmarks/bench_weak_supervision.py [--fields 300] [--size 256] [--epochs 12]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def score_rows(
    rows, fields, solution, header: str, gain: tuple[int, int], gain_label: str, width: int
):
    """Score each (name, cell table) of ``rows`` and print the table (names ``width`` wide)
    with one gain line: score of row ``gain[0]`` − score of row ``gain[1]``.

    Returns (scores by name, gain).
    """
    from hpasc.train.validation import competition_map

    scores = {name: competition_map(table, fields, solution) for name, table in rows}
    print(f"{header:<{width}} {'mAP@0.6':>8}")
    for name, _ in rows:
        print(f"{name:<{width}} {scores[name]:>8.4f}")
    diff = scores[rows[gain[0]][0]] - scores[rows[gain[1]][0]]
    print(f"{gain_label:<{width}} {diff:>+8.4f}")
    return scores, diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=300)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=None, help="default: the config's")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--config", default=str(Path(__file__).parents[1] / "configs/image-level/synth-256.yaml")
    )
    p.add_argument(
        "--work", default=None, help="keep data and run here (default: a temporary folder)"
    )
    p.add_argument("overrides", nargs="*", help="config overrides a.b=value")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="hpasc-bench-ws-"))
    try:
        run_benchmark(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(args, work: Path) -> None:
    from hpasc.cells import PROB_COLUMNS, broadcast_image_table, make_table
    from hpasc.classes import read_labels
    from hpasc.io.store import Store
    from hpasc.runconfig.image_level import load_image_level_config
    from hpasc.synth import synthesize
    from hpasc.train.image_level import train_fold
    from hpasc.train.validation import read_solution

    data = work / "data"
    t0 = time.perf_counter()
    if not (data / "train.csv").exists():
        synthesize(data, n_images=args.fields, size=args.size, seed=args.seed, progress=False)
    t_synth = time.perf_counter() - t0

    overrides = [f"data.root={data}", *args.overrides]
    if args.epochs is not None:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    cfg = load_image_level_config(args.config, overrides)
    run = work / "run"
    t0 = time.perf_counter()
    fold_path = train_fold(cfg, 0, run, resume=True)
    t_train = time.perf_counter() - t0

    import pandas as pd

    cells = pd.read_parquet(fold_path / "valid_cells.parquet")
    images = pd.read_parquet(fold_path / "valid_images.parquet")
    masks = Store(str(data / "masks"))
    fields = [(fid, masks) for fid in images["image_id"]]
    solution = read_solution(str(data / "solution.csv"))
    labels = read_labels(data / "train.csv")
    truth = labels.y[[labels.index()[f] for f in images["image_id"]]]
    oracle_images = images.copy()
    oracle_images[PROB_COLUMNS] = truth.astype(np.float32)

    rows = [
        (
            "cells: CAM mean inside each cell (hpasc)",
            make_table(cells.image_id, cells.cell_id, cells[PROB_COLUMNS]),
        ),
        ("baseline: image-level prob. broadcast to cells", broadcast_image_table(cells, images)),
        (
            "oracle: true image labels broadcast to cells",
            broadcast_image_table(cells, oracle_images),
        ),
    ]
    n_train = args.fields - len(images)
    print(
        f"\nweak supervision on hpasc synth: {args.fields} fields of {args.size} px "
        f"({n_train} train / {len(images)} held out, {len(cells)} held-out cells), "
        f"{cfg.model.arch}, {cfg.trainer.max_epochs} epochs, TTA {cfg.predict.tta}"
    )
    _, gain = score_rows(
        rows, fields, solution, "scoring", (0, 1), "gain of per-cell CAM over the baseline", 50
    )
    print(f"target: gain >= +0.10 -> {'met' if gain >= 0.10 else 'NOT met'}")
    kept = f"; kept in {work}" if args.work else ""
    print(f"time: synth {t_synth:.0f} s, train + predict {t_train:.0f} s{kept}")


if __name__ == "__main__":
    main()
