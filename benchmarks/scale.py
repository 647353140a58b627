"""Dataset scale: every preparation and inference stage per field, projected to the reference run.

For each stage, seconds per field on ONE core (``torch``/OpenCV limited to one thread: a worker)
at field sides 1728, 2048 and 3072, and the peak resident memory of that worker (each stage runs
in its own fresh process; the peak is reset before each measurement, ``/proc`` VmHWM). Fields
are synthetic (``bench_crops.synthetic_field``: RGBY, 25 cells whatever the side, as real fields
of every size). Networks have random weights (their cost does not depend on them); the HPA
networks' outputs are replaced, after their real forward, by probability maps drawn from the
field's known cells so that ``label_cell`` does its real amount of work.

Then: how cost grows with field side and with the cell count; the projected wall time of the
reference run's preparation (Kaggle train, public HPA, test; counts in ``docs/reference-run.md``)
and of its test-set inference (20 models, D4 TTA) on 2, 16 and 64 CPU workers; and, measured in
this same run, crops and submission against the original's algorithms (writes included).

    python benchmarks/scale.py [--quick]    # make bench

``--quick``: one field side (2048) and no inference (a smoke run, ~1 minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIDES = (1728, 2048, 3072)

# The reference run (docs/reference-run.md, docs/public-hpa.md, landscape: ">80% of the pixels
# are 2048"). The split of the Kaggle fields by side is not published: assumed below.
KAGGLE_TRAIN = 21_806
PUBLIC_HPA = 73_000  # 68k–78k imported fields, at 1536 px
TEST = 559
SIDE_MIX = {1728: 0.1, 2048: 0.8, 3072: 0.1}
WORKERS = (2, 16, 64)
ENSEMBLE = {"cam": 10, "cell": 10}  # 20 test models: 2 CAM configs and 2 cell configs × 5 folds
D4 = 8
CELLS = 25
NETWORK_SECONDS = [0.0]  # time spent in the HPA networks' forward (the stand-ins add to it)


# ------------------------------------------------------------------------ measurements (child)


def _one_thread() -> None:
    """One thread for OpenCV and, once a stage has imported it, torch (importing torch here
    would add its ~0.6 GB to the memory of stages that never use it)."""
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _field(side: int, per_axis: int = 5):
    """The synthetic field of ``side``: read from the parent's PNGs (``SCALE_FIELDS``) so that a
    stage's process does not carry the generator's temporaries in its resident memory."""
    folder = os.environ.get("SCALE_FIELDS")
    if folder is None or per_axis != 5:
        from bench_crops import synthetic_field

        return synthetic_field(side, seed=side, per_axis=per_axis)
    from hpasc.io.images import read_field, read_mask
    from hpasc.io.store import Store

    root = Path(folder)
    return read_field(Store(root / "images"), str(side)), read_mask(
        Store(root / "masks"), str(side)
    )


def _write_png_field(folder: Path, field_id: str, image, mask) -> None:
    from hpasc.io.images import write_field, write_mask
    from hpasc.io.store import Store

    write_field(Store(folder / "images"), field_id, image)
    write_mask(Store(folder / "masks"), field_id, mask)


def _resize(size: int) -> Callable[[int, Path], Callable[[], object]]:
    """``resize_set`` of one field at ``side`` to ``size`` with the reference recipe's settings:
    4 PNGs decoded, resized, encoded and written."""

    def setup(side: int, tmp: Path) -> Callable[[], object]:
        from hpasc.prepare import resize_set

        _write_png_field(tmp, "f", *_field(side))
        options = dict(interpolation="linear", dtype="uint8", eight_bit="opencv")
        return lambda: resize_set(tmp / "images", tmp / f"out-{size}", size=size, overwrite=True,
                                  progress=False, **options)  # fmt: skip

    return setup


def _mask_resize(side: int, tmp: Path) -> Callable[[], object]:
    """An original-size mask to 1536 and to 768 (nearest), PNG decode and encode included."""
    from hpasc.prepare import resize_set

    _write_png_field(tmp, "f", *_field(side))

    def run() -> None:
        for size in (1536, 768):
            resize_set(tmp / "masks", tmp / f"out-{size}", size=size, masks=True, overwrite=True,
                       progress=False)  # fmt: skip

    return run


def _classical(side: int, tmp: Path) -> Callable[[], object]:
    from hpasc.segment import get_segmenter

    image, _ = _field(side)
    segmenter = get_segmenter("classical")
    return lambda: segmenter.segment(image)


def _hpa_unet(preset: str, label_scale: float | None = None) -> Callable[[int, Path], Callable]:
    """The HPA U-Net segmenter with ``preset`` end to end (both networks' real forward on CPU)."""

    def setup(side: int, tmp: Path) -> Callable[[], object]:
        import torch

        from bench_segment import probability_maps
        from hpasc.segment import get_segmenter
        from hpasc.segment.dpn_unet import DPNUnet

        image, mask = _field(side)

        class Standin(torch.nn.Module):
            """Runs the real network, answers with logits of maps made from the known cells."""

            def __init__(self, which: int) -> None:
                super().__init__()
                self.net, self.which, self.logits = DPNUnet().eval(), which, None

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                start = time.perf_counter()
                self.net(x)
                NETWORK_SECONDS[0] += time.perf_counter() - start
                if self.logits is None or self.logits.shape[-2:] != x.shape[-2:]:
                    maps = probability_maps(mask, image[..., 2], x.shape[-1])[self.which]
                    self.logits = torch.from_numpy(np.log(np.clip(maps, 1e-4, 1)))[None]
                return self.logits.expand(x.shape[0], -1, -1, -1)

        segmenter = get_segmenter(
            "hpa-unet",
            nuclei_model=Standin(0),
            cell_model=Standin(1),
            preset=preset,
            label_scale=label_scale,
            batch_size=1,
            device="cpu",
        )
        segmenter.nuclei_net(torch.zeros(1, 3, 64, 64))  # warm-up of the kernels
        return lambda: segmenter.segment(image)

    return setup


def _crop(size: int) -> Callable[[int, Path], Callable[[], object]]:
    """Crop a field at ``size`` (its 768/1536 copy): decode, crop, table, record written."""

    def setup(side: int, tmp: Path, per_axis: int = 5) -> Callable[[], object]:
        import cv2

        from hpasc import prepare
        from hpasc.io.store import Store

        image, mask = _field(side, per_axis)
        image = cv2.resize(image, (size, size))
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
        _write_png_field(tmp, "f", image, mask)
        out = Store(tmp / "crops")
        args = (str(tmp / "images"), str(tmp / "masks"), None, 192, "f")

        def run() -> None:
            record, _ = prepare._crop_one(*args)
            out.write_bytes(prepare.record_name("f"), record)

        return run

    return setup


def _cell_table(side: int, tmp: Path) -> Callable[[], object]:
    """The test crops' cell table: geometry at 768 and measured on the original-size mask."""
    import cv2

    from hpasc.prepare import cell_table

    _, mask = _field(side)
    small = cv2.resize(mask, (768, 768), interpolation=cv2.INTER_NEAREST_EXACT)
    return lambda: cell_table(small, "f", orig_mask=mask)


def _cam_pass(side: int, tmp: Path) -> Callable[[], object]:
    """One TTA pass of an EfficientNet-B2 CAM model on a 768² field (of 25 cells)."""
    import cv2
    import torch

    from hpasc.models.cam import CAMClassifier, CAMModelConfig
    from hpasc.predict.image_level import predict_batch

    image, mask = _field(side)
    image = torch.from_numpy(cv2.resize(image, (768, 768))).permute(2, 0, 1)[None].float()
    small = cv2.resize(mask, (768, 768), interpolation=cv2.INTER_NEAREST_EXACT)
    mask = torch.from_numpy(small.astype(np.int64))[None]
    model = CAMClassifier(CAMModelConfig(arch="efficientnet_b2")).eval()
    k = int(mask.max())
    return lambda: predict_batch([model], image / 255, mask, k, tta="none")


def _cell_pass(side: int, tmp: Path) -> Callable[[], object]:
    """One TTA pass of a ResNeSt50d cell model over a field's 25 crops of 192²."""
    import torch

    from hpasc.models.cell import CellClassifier, CellModelConfig
    from hpasc.predict.cell_level import predict_crops

    crops = torch.randint(0, 256, (CELLS, 8, 192, 192), dtype=torch.uint8)
    model = CellClassifier(CellModelConfig(arch="resnest50d")).eval()
    return lambda: torch.inference_mode()(predict_crops)([model], crops, tta="none")


# name: (label, setup, sides; None = the field sides of the run)
STAGES: dict[str, tuple[str, Callable, tuple[int, ...] | None]] = {
    "resize-768": ("resize field → 768 (4 PNGs decoded, resized, encoded)", _resize(768), None),
    "resize-1536": ("resize field → 1536", _resize(1536), None),
    "resize-768-from-1536": ("resize 1536 copy → 768 (public HPA)", _resize(768), (1536,)),
    "mask-resize": ("resize mask → 1536 and 768 (nearest)", _mask_resize, None),
    "segment-classical": ("segment: classical (hpasc default)", _classical, None),
    # the recipe's masks: preset pfcell-2021 (every field to 512 px for the nets)
    "segment-hpa-unet-test": (
        "segment: hpa-unet pfcell-2021, test masks (label_cell s=0.5)",
        _hpa_unet("pfcell-2021", 0.5),
        None,
    ),
    "segment-hpa-unet-train": (
        "segment: hpa-unet pfcell-2021, training masks (1536 copy, s=1.0)",
        _hpa_unet("pfcell-2021", 1.0),
        (1536,),
    ),
    "segment-hpa-unet-hpacellseg": (
        "segment: hpa-unet hpacellseg (nets at ¼ side, labels at the field)",
        _hpa_unet("hpacellseg"),
        (2048,),
    ),
    "segment-hpa-unet-fast": (
        "segment: hpa-unet fast (nets at ¼ side, s=0.5)",
        _hpa_unet("fast"),
        None,
    ),
    "crop-768": ("crop 192 px from the 768 copy (record written)", _crop(768), (2048,)),
    "crop-1536": ("crop 192 px from the 1536 copy (record written)", _crop(1536), (2048,)),
    "cell-table": ("cell table with original-size geometry", _cell_table, None),
    "infer-cam-pass": ("EfficientNet-B2 @768, one of 8 D4 passes", _cam_pass, (2048,)),
    "infer-cell-pass": ("ResNeSt50d, 25 crops of 192², one of 8 D4 passes", _cell_pass, (2048,)),
}
INFERENCE = ("infer-cam-pass", "infer-cell-pass")


def _child(stage: str, sides: list[int], repeats: int) -> None:
    """Measure one stage at each side in this (fresh) process; one JSON line per side."""
    from bench_crops import _reset_peak, _status_kib

    _one_thread()
    label, setup, _ = STAGES[stage]
    for side in sides:
        with tempfile.TemporaryDirectory() as tmp:
            run = setup(side, Path(tmp))
            _one_thread()
            if not stage.startswith("segment-hpa"):  # those warm up on a tiny input instead
                run()
            before = _status_kib("VmRSS")
            _reset_peak()
            times = []
            for _ in range(repeats):
                NETWORK_SECONDS[0] = 0.0
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start, NETWORK_SECONDS[0]))
            peak = _status_kib("VmHWM")
        seconds, network = min(times)
        print(json.dumps({"stage": stage, "side": side, "seconds": seconds, "network_seconds": network,
                          "peak_mib": peak / 1024, "before_mib": before / 1024}), flush=True)  # fmt: skip


def _cells_growth(repeats: int) -> list[tuple[int, float, float]]:
    """(cells, crop-768 s, classical-2048 s) for fields of 9, 25 and 64 cells."""
    from bench_crops import synthetic_field
    from hpasc.segment import get_segmenter

    _one_thread()
    out = []
    segmenter = get_segmenter("classical")
    for per_axis in (3, 5, 8):
        with tempfile.TemporaryDirectory() as tmp:
            run = _crop(768)(2048, Path(tmp), per_axis)
            run()
            t_crop = min(_timed(run) for _ in range(repeats))
        image, _ = synthetic_field(2048, seed=per_axis, per_axis=per_axis)
        t_seg = _timed(lambda image=image: segmenter.segment(image))
        out.append((per_axis**2, t_crop, t_seg))
    return out


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ driver (parent)


def measure(stage: str, sides: list[int], repeats: int, fields: str) -> dict[int, dict]:
    """Run ``stage`` in a fresh process; {side: {"seconds", "peak_mib", ...}}."""
    env = dict(os.environ, SCALE_FIELDS=fields)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__)), "--child", stage,
           "--sides", ",".join(map(str, sides)), "--repeats", str(repeats)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"stage {stage} failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["side"]: r for r in rows}


def _fmt_hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} d"


def _per_field(results: dict, stage: str, side: int, cpu_only: bool = False) -> float:
    """Seconds of ``stage`` for a field of ``side`` (stages measured at one side are fixed);
    ``cpu_only``: without the HPA networks' forward (what is left when they run on a GPU)."""
    got = results[stage]

    def value(row: dict) -> float:
        return row["seconds"] - (row.get("network_seconds", 0.0) if cpu_only else 0.0)

    if side in got:
        return value(got[side])
    if len(got) == 1:
        return value(next(iter(got.values())))
    # between measured sides: proportional to the pixels of the nearest measured side
    near = min(got, key=lambda s: abs(s - side))
    return value(got[near]) * (side / near) ** 2


def projection(results: dict, segment: str, gpu_networks: bool = False) -> dict[str, float]:
    """CPU-seconds of the preparation of each part of the reference run (one core);
    ``gpu_networks``: the HPA networks' forward left out (run on a GPU)."""

    def mix(fn: Callable[[int], float]) -> float:
        return sum(w * fn(s) for s, w in SIDE_MIX.items())

    crops = _per_field(results, "crop-768", 2048) + _per_field(results, "crop-1536", 2048)
    train_seg = (
        "segment-hpa-unet-train" if segment == "hpa-unet" else "segment-classical"
    )  # the reference segments train and public fields on their 1536 copies

    def seg_1536() -> float:
        return _per_field(results, train_seg, 1536, gpu_networks)

    def train(side: int) -> float:
        return (
            _per_field(results, "resize-768", side)
            + _per_field(results, "resize-1536", side)
            + seg_1536()
            + _per_field(results, "mask-resize", 1536) / 2  # 1536 → 768 only
            + crops
        )

    def test(side: int) -> float:
        seg = "segment-hpa-unet-test" if segment == "hpa-unet" else "segment-classical"
        return (
            _per_field(results, "resize-768", side)
            + _per_field(results, "resize-1536", side)
            + _per_field(results, seg, side, gpu_networks)
            + _per_field(results, "mask-resize", side)
            + crops
            + _per_field(results, "cell-table", side)
        )

    public = (
        _per_field(results, "resize-768-from-1536", 1536)
        + seg_1536()
        + _per_field(results, "mask-resize", 1536) / 2
        + crops
    )
    return {
        "Kaggle train": KAGGLE_TRAIN * mix(train),
        "public HPA": PUBLIC_HPA * public,
        "test": TEST * mix(test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 only, no inference")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sides", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, [int(s) for s in args.sides.split(",")], args.repeats)
        return

    from machine import cpu_description, print_table

    sides = (2048,) if args.quick else SIDES
    stages = [s for s in STAGES if not (args.quick and s in INFERENCE)]
    begin = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as fields:
        from bench_crops import synthetic_field

        for side in sorted({*sides, 1536}):
            _write_png_field(Path(fields), str(side), *synthetic_field(side, seed=side, per_axis=5))
        for stage in stages:
            own = STAGES[stage][2]
            results[stage] = measure(stage, list(own or sides), args.repeats, fields)
            print(f"  measured {stage} ({time.perf_counter() - begin:.0f} s)", file=sys.stderr)

    print(f"machine: {cpu_description()}; one worker = one core (1 thread); "
          f"synthetic fields of {CELLS} cells; random network weights\n")  # fmt: skip
    header = ["stage (per field)", *[f"{s}² s" for s in sides], "fixed-size input s", "peak MiB"]
    rows = []
    for stage in stages:
        label, _, own = STAGES[stage]
        got = results[stage]
        per_side = [f"{got[s]['seconds']:.3f}" if own is None else "" for s in sides]
        fixed = "" if own is None else f"{next(iter(got.values()))['seconds']:.3f} @{own[0]}"
        peak = max(r["peak_mib"] for r in got.values())
        rows.append([label, *per_side, fixed, f"{peak:.0f}"])
        if any(r["network_seconds"] for r in got.values()):
            net = [f"{got[s]['network_seconds']:.3f}" if own is None else "" for s in sides]
            fixed = "" if own is None else f"{next(iter(got.values()))['network_seconds']:.3f}"
            rows.append(["  of which the two networks' forward", *net, fixed, ""])
    print_table(header, rows)

    if not args.quick:
        print("growth with field side (1728² → 3072² is 3.16× the pixels):")
        growth = []
        for stage in stages:
            got = results[stage]
            if STAGES[stage][2] is None:
                ratio = got[3072]["seconds"] / got[1728]["seconds"]
                growth.append([STAGES[stage][0], f"{ratio:.2f}×"])
        print_table(["stage", "3072² / 1728² time"], growth)
        print("growth with cell count (2048² field; crop on its 768 copy):")
        print_table(
            ["cells", "crop-768 s", "classical segment s"],
            [[str(n), f"{c:.3f}", f"{s:.2f}"] for n, c, s in _cells_growth(args.repeats)],
        )

    print(
        f"projected preparation of the reference run on CPU: {KAGGLE_TRAIN:,} Kaggle train + "
        f"{PUBLIC_HPA:,} public-HPA + {TEST} test fields; sides {SIDE_MIX} (assumed); ideal "
        "scaling over workers (one field per worker at a time)"
    )
    rows = []
    variants = [("hpa-unet", False, "segmenter hpa-unet"),
                ("hpa-unet", True, "hpa-unet, networks on a GPU (CPU part)"),
                ("classical", False, "segmenter classical")]  # fmt: skip
    for segment, gpu, name in variants:
        parts = projection(results, segment, gpu)
        total = sum(parts.values())
        cells = [_fmt_hours(total / w) for w in WORKERS]
        detail = ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())
        rows.append([name, f"{total / 3600:,.0f} h", *cells, detail])
    peak = max(r["peak_mib"] for got in results.values() for r in got.values())
    print_table(
        ["preparation", "CPU core-hours", *[f"{w} workers" for w in WORKERS], "share"], rows
    )
    print(
        f"memory: ≤ {peak:.0f} MiB per worker → {', '.join(f'{w} workers {w * peak / 1024:.0f} GiB' for w in WORKERS)}\n"
    )

    if not args.quick:
        cam = _per_field(results, "infer-cam-pass", 2048) * D4
        cell = _per_field(results, "infer-cell-pass", 2048) * D4
        per_field = ENSEMBLE["cam"] * cam + ENSEMBLE["cell"] * cell
        print("inference per field on CPU (one core, D4 TTA = 8 passes, random weights):")
        print_table(
            ["model", "s / field", f"{TEST} test fields, 2 / 16 / 64 workers"],
            [
                ["EfficientNet-B2 @768, D4", f"{cam:.1f}", " / ".join(_fmt_hours(TEST * cam / w) for w in WORKERS)],
                ["ResNeSt50d, 25 crops 192², D4", f"{cell:.1f}", " / ".join(_fmt_hours(TEST * cell / w) for w in WORKERS)],
                ["test ensemble (10 CAM + 10 cell models)", f"{per_field:.0f}", " / ".join(_fmt_hours(TEST * per_field / w) for w in WORKERS)],
            ],
        )  # fmt: skip

    # the two algorithms with a stated target, against the original's, in this same run
    from bench_crops import crop_ratio
    from bench_submission import write_ratio

    _one_thread()
    c = crop_ratio(768, 12)  # the set's fixed costs (zip commit, table) amortise as in a real run
    s = write_ratio(3 if args.quick else 6, np.random.default_rng(0))
    print("against the original's algorithms (same fields, writes included, outputs checked):")
    print_table(
        ["step", "original s/field", "hpasc s/field", "ratio", "target"],
        [
            ["crops (768², 25 cells; blosc-per-cell zip vs .crops)", f"{c['original_s']:.3f}", f"{c['hpasc_s']:.3f}", f"{c['ratio']:.1f}×", "≥ 10×"],
            ["submission rows + CSV (2048², 25 cells)", f"{s['original_s']:.3f}", f"{s['hpasc_s']:.4f}", f"{s['ratio']:.1f}×", "≥ 25×"],
        ],
    )  # fmt: skip
    print(f"total benchmark time {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
