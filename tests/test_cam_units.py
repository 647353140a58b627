"""Unit tests of the image-level building blocks: pooling, CutMix, D4, drop-cell, affine,
heads, losses and the learning-rate schedule."""

import math

import numpy as np
import pytest
import torch

from hpasc.data.augment import (
    CutMixBox,
    affine,
    cutmix,
    d4_inverse,
    d4_transform,
    drop_cells,
    inverse_cutmix,
    sample_affine,
    sample_cutmix_box,
    sample_cutmix_boxes,
)
from hpasc.models.heads import CosineClassifier, build_head
from hpasc.models.losses import classification_loss, consistency_loss, focal_loss
from hpasc.models.pooling import cell_mean_pool
from hpasc.train.optim import OptimConfig, build_optimizer, build_scheduler, lr_factor


def naive_pool(values, mask, k):
    b, c = values.shape[:2]
    means, counts = torch.zeros(b, c, k), torch.zeros(b, k)
    for i in range(b):
        for cell in range(1, k + 1):
            sel = mask[i] == cell
            counts[i, cell - 1] = sel.sum()
            if sel.any():
                means[i, :, cell - 1] = values[i][:, sel].mean(dim=1)
    return means, counts


@pytest.mark.parametrize("max_id", [9, 300])
def test_pooling_matches_naive_loop(max_id):
    g = torch.Generator().manual_seed(max_id)
    values = torch.randn(3, 5, 40, 40, generator=g)
    mask = torch.randint(0, max_id + 1, (3, 40, 40), generator=g)
    mask[1] = torch.where(mask[1] % 3 == 0, 0, mask[1])  # ids absent from one image only
    means, counts = cell_mean_pool(values, mask, max_id)
    ref_means, ref_counts = naive_pool(values, mask, max_id)
    assert means.shape == (3, 5, max_id)
    torch.testing.assert_close(counts, ref_counts)
    torch.testing.assert_close(means, ref_means, atol=1e-5, rtol=1e-4)
    assert (counts[1, 2::3] == 0).all() and (means[1, :, 2::3] == 0).all()


def test_pooling_beyond_255_cells_and_gradient():
    mask = torch.arange(1, 401).reshape(1, 20, 20)  # 400 one-pixel cells
    values = torch.randn(1, 2, 20, 20, requires_grad=True)
    means, counts = cell_mean_pool(values, mask)
    assert means.shape == (1, 2, 400) and (counts == 1).all()
    torch.testing.assert_close(means, values.reshape(1, 2, 400), atol=1e-5, rtol=1e-5)
    means.sum().backward()
    assert torch.allclose(values.grad, torch.ones_like(values), atol=1e-5)


def test_pooling_rejects_ids_beyond_num_cells():
    with pytest.raises(ValueError, match="cell id 7"):
        cell_mean_pool(torch.zeros(1, 1, 4, 4), torch.full((1, 4, 4), 7), num_cells=5)


def test_pooling_half_precision_sums_in_float32():
    values = torch.full((1, 1, 64, 64), 0.1, dtype=torch.bfloat16)
    means, _ = cell_mean_pool(values, torch.ones(1, 64, 64, dtype=torch.long))
    assert means.dtype == torch.float32
    assert abs(float(means) - float(values[0, 0, 0, 0])) < 1e-4


@pytest.mark.parametrize("repeat", [1, 3])
def test_cutmix_inverse_is_identity(repeat):
    rng = np.random.default_rng(repeat)
    x = torch.randn(6, 19, 48, 40)
    for _ in range(5):
        boxes = sample_cutmix_boxes(6, 48, 40, rng, repeat=repeat)
        mixed = cutmix(x, boxes)
        assert torch.equal(inverse_cutmix(mixed, boxes), x)


def test_cutmix_moves_box_from_permuted_sample():
    x = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 1, 8, 8).clone()
    box = CutMixBox(2, 6, 1, 5, (2, 0, 1), 8, 8)
    mixed = cutmix(x, [box])
    assert (mixed[0, :, 2:6, 1:5] == 2).all() and (mixed[0, :, :2] == 0).all()
    assert box.lam == 1 - 16 / 64
    # the inverse re-aligns a map computed on the mixed batch with each sample's own image
    assert torch.equal(inverse_cutmix(mixed, [box]), x)


def test_cutmix_box_is_clipped_and_lambda_matches_area():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = sample_cutmix_box(4, 30, 50, rng)
        assert 0 <= box.y0 <= box.y1 <= 30 and 0 <= box.x0 <= box.x1 <= 50
        assert math.isclose(box.lam, 1 - (box.y1 - box.y0) * (box.x1 - box.x0) / 1500)
        assert sorted(box.perm) == [0, 1, 2, 3]


def test_d4_transforms_are_distinct_and_invertible():
    x = torch.randn(2, 3, 6, 5)
    outs = [d4_transform(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for k in range(8):
        assert torch.equal(d4_inverse(outs[k], k), x)
        a = np.random.default_rng(k).random((6, 5, 4))
        assert np.array_equal(d4_inverse(d4_transform(a, k, dims=(0, 1)), k, dims=(0, 1)), a)


def test_drop_cells_erases_some_present_cells():
    mask = np.zeros((30, 30), np.int32)
    mask[2:8, 2:8], mask[12:18, 12:18], mask[22:28, 2:8] = 3, 7, 9
    image = np.full((30, 30, 4), 100, np.uint8)
    img2, mask2 = drop_cells(image, mask, np.random.default_rng(1))
    left = set(np.unique(mask2)) - {0}
    assert 1 <= len(left) <= 2 and left < {3, 7, 9}
    for cell in {3, 7, 9} - left:
        assert (img2[mask == cell] == 0).all()
    assert (image == 100).all()  # input untouched


def test_affine_angles_symmetric_and_masks_keep_ids():
    rng = np.random.default_rng(0)
    angles = [sample_affine(rng, 45, 0, 0).angle for _ in range(200)]
    assert min(angles) < -20 and max(angles) > 20
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    mask[0, 8:20, 8:20] = 300
    out = affine(mask, sample_affine(rng, 30, 10, 0.1), nearest=True)
    assert set(out.unique().tolist()) <= {0, 300} and out.dtype == torch.long


def test_heads():
    x = torch.randn(2, 16, 5, 5)
    cos = build_head("cosine", 16, 19)
    assert isinstance(cos, CosineClassifier) and cos.scale.item() == 20.0
    out = cos(x)
    assert out.shape == (2, 19, 5, 5) and out.abs().max() <= 20.0 + 1e-4
    conv = build_head("conv", 16, 19)
    assert not any("bias" in n for n, _ in conv.named_parameters())
    torch.testing.assert_close(conv(x).mean((2, 3)), conv(x.mean((2, 3))), atol=1e-5, rtol=1e-5)


def test_losses():
    logits, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    expected = ((1 - torch.exp(-bce)) ** 2 * bce).mean()
    torch.testing.assert_close(focal_loss(logits, y), expected)
    torch.testing.assert_close(classification_loss(logits, y, "bce"), bce.mean())
    valid = torch.tensor([[True, False]])
    targets = torch.tensor([[1.0, float("nan")]])
    loss = consistency_loss(logits, torch.nan_to_num(targets), valid, "ce")
    torch.testing.assert_close(loss, bce[0, 0] / (1 + 1e-6))
    l1 = consistency_loss(
        logits, y, torch.ones_like(valid), "l1", target_logits=torch.zeros_like(logits)
    )
    assert math.isclose(float(l1), 1.5, rel_tol=1e-5)


def test_lr_schedule_matches_reference_numbers():
    cfg = OptimConfig(lr=1e-3, schedule="cos", warmup_epochs=5, warmup_factor=0.1)
    lrs = [1e-3 * lr_factor(e, cfg, 50) for e in range(50)]
    assert math.isclose(lrs[0], 1.0e-4, rel_tol=1e-9)
    assert math.isclose(lrs[4], 8.07e-4, rel_tol=2e-3)
    assert math.isclose(lrs[5], 9.755e-4, rel_tol=1e-3)
    assert math.isclose(lrs[49], 9.87e-7, rel_tol=1e-2)
    # the torch scheduler steps through the same values
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, 50)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, lrs[:6], rtol=1e-9)


def test_trainer_factory_resolves_devices_precision_and_loggers(tmp_path, monkeypatch):
    import importlib.util

    from lightning.pytorch.strategies import DDPStrategy

    from hpasc.errors import ConfigError
    from hpasc.train.trainer import (
        TrainerConfig,
        build_loggers,
        build_trainer,
        resolve_precision,
        resolve_strategy,
    )

    assert resolve_precision(TrainerConfig(accelerator="cpu")) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(TrainerConfig(accelerator="gpu")) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(TrainerConfig(accelerator="cuda")) == "16-mixed"
    assert resolve_precision(TrainerConfig(precision="16-mixed")) == "16-mixed"
    assert isinstance(resolve_strategy(TrainerConfig(devices="2")), DDPStrategy)
    assert isinstance(resolve_strategy(TrainerConfig(devices="0,1")), DDPStrategy)
    assert isinstance(resolve_strategy(TrainerConfig(devices="1", num_nodes=2)), DDPStrategy)
    assert resolve_strategy(TrainerConfig(devices="1")) == "auto"
    with pytest.raises(ConfigError, match="trainer.devices"):
        resolve_strategy(TrainerConfig(devices="many"))
    with pytest.raises(ConfigError, match="unknown logger"):
        build_loggers(TrainerConfig(loggers=["csv", "neptune"]), tmp_path)
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="pip install wandb"):
            build_loggers(TrainerConfig(loggers=["wandb"]), tmp_path)
    trainer = build_trainer(TrainerConfig(accelerator="cpu", max_epochs=3), tmp_path / "fold-0")
    assert trainer.max_epochs == 3 and len(trainer.loggers) == 2
    names = {type(c).__name__ for c in trainer.callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor"} <= names
