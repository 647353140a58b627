"""The reference recipe's settings where the 7th place differs from hpasc's own defaults
(issue 11, items 1.3, 1.6, 1.7): each option does what it says, and the reference configs
and the recipe's plan use the original's value."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
IMAGE_LEVEL = [
    "b2-768",
    "b5-768",
    "b7-768",
    "b2-1536-from-768",
    "b2-768-stage2",
    "b2-768-stage3",
    "b2-768-stage3-cos",
]
CELL_LEVEL = [
    "resnest50-from768-stage2",
    "resnest50-from768-stage3",
    "resnest50-from1536-stage3-cos",
]


@pytest.mark.parametrize("name", IMAGE_LEVEL)
def test_reference_cam_configs_upsample_nearest_in_fp32(name):
    from hpasc.runconfig.image_level import PredictConfig, load_image_level_config
    from hpasc.train.trainer import TrainerConfig

    cfg = load_image_level_config(CONFIGS / "image-level" / f"{name}.yaml")
    assert cfg.predict.upsample == "nearest"  # F.interpolate's default in the original
    assert cfg.trainer.precision == "32-true" and cfg.predict.precision == "32-true"
    # hpasc's own defaults stay as they are
    assert (PredictConfig().upsample, PredictConfig().precision) == ("bilinear", "auto")
    assert TrainerConfig().precision == "auto"


@pytest.mark.parametrize("name", CELL_LEVEL)
def test_reference_cell_configs_feed_raw_values_in_fp32(name):
    from hpasc.models.cell import CellModelConfig
    from hpasc.runconfig.cell_level import load_cell_level_config

    cfg = load_cell_level_config(CONFIGS / "cell-level" / f"{name}.yaml")
    assert cfg.model.input_range == "raw"
    assert cfg.trainer.precision == "32-true" and cfg.predict.precision == "32-true"
    assert CellModelConfig().input_range == "unit"


def test_inference_precision_32_true_disables_autocast():
    import contextlib

    from hpasc.predict.base import inference_autocast

    cuda = torch.device("cuda")  # no GPU needed: the context is only built, never entered
    assert isinstance(inference_autocast(cuda, "32-true"), contextlib.nullcontext)
    assert isinstance(inference_autocast(torch.device("cpu"), "auto"), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast warns when CUDA is absent
        ctx = inference_autocast(cuda, "bf16-mixed")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        inference_autocast(cuda, "64")


def test_bad_precision_and_input_range_name_the_key():
    from hpasc.errors import ConfigError
    from hpasc.runconfig.cell_level import load_cell_level_config
    from hpasc.runconfig.image_level import load_image_level_config

    with pytest.raises(ConfigError, match="predict.precision"):
        load_image_level_config(CONFIGS / "image-level/b2-768.yaml", ["predict.precision=fp8"])
    with pytest.raises(ConfigError, match="model.input_range"):
        load_cell_level_config(
            CONFIGS / "cell-level/resnest50-from768-stage2.yaml", ["model.input_range=x"]
        )


def test_instance_norm_damps_dim_planes_scaled_to_unit():
    """Why input_range matters: InstanceNorm's eps (1e-5) is added to the variance, so a dim cell
    (grey level 1 on 44 % of the crop) scaled by 1/255 comes out with std 0.52, not 1 (raw: 1.00)."""
    from hpasc.models.cell import crops_to_input

    yy, xx = np.mgrid[:64, :64] - 31.5
    cell = (np.hypot(yy, xx) < 24).astype(np.uint8)
    crop = torch.as_tensor(np.broadcast_to(cell, (1, 8, 64, 64)).copy())
    norm = torch.nn.InstanceNorm2d(8)
    raw, unit = crops_to_input(crop, "raw"), crops_to_input(crop, "unit")
    assert torch.equal(raw, crop.float()) and float(unit.max()) <= 1.0
    assert float(norm(unit).std()) == pytest.approx(0.52, abs=0.01)
    assert float(norm(raw).std()) == pytest.approx(1.0, abs=0.001)
    bright = crop * 200  # a bright cell: the scale hardly matters
    ratio = norm(crops_to_input(bright, "unit")).std() / norm(crops_to_input(bright, "raw")).std()
    assert float(ratio) > 0.99


def _cell_cfg(input_range: str):
    from hpasc.runconfig.cell_level import CellLevelConfig, validate

    cfg = CellLevelConfig()
    cfg.model.arch, cfg.model.input_range = "test_resnet", input_range
    cfg.augment.d4, cfg.augment.cutmix_p = False, 0.0
    return validate(cfg)


@pytest.mark.parametrize("input_range", ["raw", "unit"])
def test_cell_model_sees_its_input_range_in_training_and_prediction(input_range):
    from hpasc.predict.cell_level import predict_crops
    from hpasc.train.cell_level_module import CellLevelModule

    torch.manual_seed(0)
    module = CellLevelModule(_cell_cfg(input_range))
    seen = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].max().item()))
    x = torch.full((2, 8, 24, 24), 200, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        module.training_step((x, torch.zeros(2, 19), torch.arange(2)), 0)
    model = module.model.eval()
    predict_crops([model], x, "none")
    expected = 200.0 if input_range == "raw" else 200 / 255
    assert seen == pytest.approx([expected, expected])


def test_pfcell_dry_run_shows_the_reference_settings(cli, tmp_path):
    """The plan names, per task, the settings of issue 11 item 1 it runs with."""
    r = cli("run", CONFIGS / "recipes/pfcell-2021.yaml", "--data", tmp_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()

    def settings(task: str) -> str:
        i = next(i for i, line in enumerate(lines) if re.search(rf"\] {re.escape(task)}  \(", line))
        return lines[i + 1]

    for task in ("train-768", "test-1536"):
        assert "interpolation=linear" in settings(task) and "eight_bit=opencv" in settings(task)
    assert "masks=True" in settings("masks-train-768")  # nearest for masks
    cam = settings("cam-b2-768/fold-0")
    assert "predict.upsample=nearest" in cam and "trainer.precision=32-true" in cam
    assert "predict.precision=32-true" in cam
    cell = settings("cell-resnest50-768-stage3/fold-2")
    assert "model.input_range=raw" in cell and "trainer.precision=32-true" in cell
    assert "data.sampling=uniform" in cell  # item 1.10: RandomSampler over all cells
    assert "upsample=nearest, precision=32-true" in settings("test-cam-b2-stage3")
    assert "precision=32-true" in settings("test-cell-resnest50-1536-stage3-cos")
