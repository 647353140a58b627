"""GPU throughput of the reference run's network work, one table (run through ``gpu.sh``).

Rows: training images/s of the stage-1 EfficientNet-B2 CAM model on 512² crops (fp32 and bf16
autocast), the B7 at 768², the ResNeSt50d cell model on 192² crops (one optimiser step =
forward of both consistency views — clean and heavy, as the CAM training does — or of the crop
batch, BCE loss, backward, Adam step); HPA U-Net fields/s (both networks, 512² inputs) at batch
1, 8 and 16; and the test ensemble (10 CAM + 10 cell models, D4 TTA, hpasc's inference code
``predict_batch`` / ``predict_crops``) in fields/s with the projected wall time for 559 test
fields. Random weights; synthetic inputs; CUDA timings synchronised.

    bash benchmarks/gpu.sh            # on a GPU machine, ≤ 8 minutes
    bash benchmarks/gpu.sh --smoke    # tiny models and sizes, CPU, seconds (tests use it)
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

TEST_FIELDS = 559
CELLS = 25


@dataclass(frozen=True)
class Sizes:
    """Architectures, sides and batch sizes of one mode."""

    b2: str = "efficientnet_b2"
    b7: str = "efficientnet_b7"
    cell: str = "resnest50d"
    cam_side: int = 512
    b7_side: int = 768
    cell_side: int = 192
    infer_side: int = 768
    unet_side: int = 512
    cam_batch: int = 16
    b7_batch: int = 4
    cell_batch: int = 128
    unet_batches: tuple[int, ...] = (1, 8, 16)
    models: int = 10  # per kind in the test ensemble
    cells: int = CELLS
    warmup: int = 3
    steps: int = 10


SMOKE = Sizes(
    b2="test_efficientnet", b7="test_efficientnet", cell="test_resnet", cam_side=64, b7_side=64,
    cell_side=32, infer_side=64, unet_side=64, cam_batch=2, b7_batch=2, cell_batch=4,
    unet_batches=(1, 2), models=1, cells=3, warmup=1, steps=1,
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model: torch.nn.Module, x: torch.Tensor, views: int, device, bf16: bool):
    """One optimiser step (forward of ``views`` copies of the batch, BCE, backward, Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = torch.zeros(x.shape[0] * views, 19, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            out = model(torch.cat([x] * views) if views > 1 else x)
            logits = out.mean(dim=(-2, -1)) if out.ndim == 4 else out  # CAM: image logits
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        opt.step()

    return step


def rows(sz: Sizes, device: torch.device) -> list[tuple[str, str]]:
    from hpasc.models.cam import CAMClassifier, CAMModelConfig
    from hpasc.models.cell import CellClassifier, CellModelConfig
    from hpasc.predict.cell_level import predict_crops
    from hpasc.predict.image_level import predict_batch
    from hpasc.segment.dpn_unet import DPNUnet

    out = []
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()

    def cam(arch: str) -> torch.nn.Module:
        return CAMClassifier(CAMModelConfig(arch=arch)).to(device).train()

    def cell(arch: str) -> torch.nn.Module:
        return CellClassifier(CellModelConfig(arch=arch)).to(device).train()

    cases = [
        (f"train {sz.b2} @{sz.cam_side}, batch {sz.cam_batch}, fp32", cam(sz.b2), sz.cam_side, sz.cam_batch, 4, 2, False),
        (f"train {sz.b2} @{sz.cam_side}, batch {sz.cam_batch}, bf16", cam(sz.b2), sz.cam_side, sz.cam_batch, 4, 2, True),
        (f"train {sz.b7} @{sz.b7_side}, batch {sz.b7_batch}, bf16", cam(sz.b7), sz.b7_side, sz.b7_batch, 4, 2, True),
        (f"train {sz.cell} @{sz.cell_side} (cells), batch {sz.cell_batch}, bf16", cell(sz.cell), sz.cell_side, sz.cell_batch, 8, 1, True),
    ]  # fmt: skip
    for label, model, side, batch, chans, views, bf16 in cases:
        if bf16 and not bf16_ok:
            out.append((label, "bf16 unsupported"))
            continue
        x = torch.rand(batch, chans, side, side, device=device)
        t = timed(train_step(model, x, views, device, bf16), device, sz.warmup, sz.steps)
        out.append((label, f"{batch / t:,.1f} images/s"))
        del model, x
        if device.type == "cuda":
            torch.cuda.empty_cache()

    nets = [DPNUnet().to(device).eval(), DPNUnet().to(device).eval()]
    for batch in sz.unet_batches:
        x = torch.rand(batch, 3, sz.unet_side, sz.unet_side, device=device)

        def forward(x=x, nets=nets) -> None:
            with torch.inference_mode():
                for net in nets:
                    torch.softmax(net(x), dim=1)

        t = timed(forward, device, sz.warmup, sz.steps)
        out.append((f"hpa-unet, both nets @{sz.unet_side}, batch {batch}", f"{batch / t:,.1f} fields/s"))  # fmt: skip
    del nets

    cams = [CAMClassifier(CAMModelConfig(arch=sz.b2)).to(device).eval() for _ in range(sz.models)]
    cells = [CellClassifier(CellModelConfig(arch=sz.cell)).to(device).eval() for _ in range(sz.models)]  # fmt: skip
    image = torch.rand(1, 4, sz.infer_side, sz.infer_side, device=device)
    mask = torch.zeros(1, sz.infer_side, sz.infer_side, dtype=torch.long, device=device)
    step = sz.infer_side // sz.cells
    for k in range(sz.cells):  # one horizontal band per cell
        mask[:, k * step : (k + 1) * step] = k + 1
    crops = torch.randint(0, 256, (sz.cells, 8, sz.cell_side, sz.cell_side), dtype=torch.uint8, device=device)  # fmt: skip

    def field() -> None:
        with torch.inference_mode():
            predict_batch(cams, image, mask, sz.cells, tta="d4")
            predict_crops(cells, crops, tta="d4")

    t = timed(field, device, 1, max(1, sz.steps // 2))
    label = f"test ensemble: {sz.models} CAM + {sz.models} cell models, D4, {sz.cells} cells"
    out.append((label, f"{1 / t:,.2f} fields/s"))
    out.append((f"  projected wall time for {TEST_FIELDS} test fields", f"{TEST_FIELDS * t / 60:,.1f} min"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes (CPU)")
    parser.add_argument(
        "--device", default=None, help="default: cuda when available (cpu in smoke)"
    )
    args = parser.parse_args()
    from machine import print_table

    sizes = SMOKE if args.smoke else Sizes()
    name = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU, {torch.get_num_threads()} threads"
    start = time.perf_counter()
    table = rows(sizes, device)
    print(f"device: {what}; torch {torch.__version__}; {'SMOKE (tiny models) ' if args.smoke else ''}"
          f"random weights; {time.perf_counter() - start:.0f} s")  # fmt: skip
    print_table(["case", "result"], table)


if __name__ == "__main__":
    main()
