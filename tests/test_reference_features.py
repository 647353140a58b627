"""Options of the original that hpasc's defaults leave off (issue 11, item 2): ER/MT green
synthesis, area weighting of the consistency loss, remove_maxpool / remove_first_stride2,
cell-level affine augmentation, non-strict loading of a pretrained cell model."""

import numpy as np
import pytest
import torch

from hpasc.data.augment import ER_CLASS, MT_CLASS, GreenSynthesis, synthesize_green
from hpasc.errors import ConfigError, InputError


def _field(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 48, 4)).astype(np.uint8)


def test_green_synthesis_copies_yellow_or_red_shifted_with_the_class_label():
    image, label = _field(), np.zeros(19, np.float32)
    label[[0, 3]] = 1
    out, lab = synthesize_green(
        image, label, np.random.default_rng(1), GreenSynthesis(p_er=1.0, noise_std=0.0)
    )
    assert lab.tolist() == [float(c == ER_CLASS) for c in range(19)]
    # green is yellow moved by one integer shift, zero where it came from outside
    found = False
    for dy in range(-20, 21):
        for dx in range(-20, 21):
            moved = np.zeros_like(image[..., 3])
            h, w = moved.shape
            moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0), 3
            ]
            found |= np.array_equal(out[..., 1], moved)
    assert found
    assert np.array_equal(out[..., [0, 2, 3]], image[..., [0, 2, 3]])
    out, lab = synthesize_green(image, label, np.random.default_rng(1), GreenSynthesis(p_mt=1.0))
    assert lab.argmax() == MT_CLASS and lab.sum() == 1
    noise = out[..., 1].astype(float) - image[..., 0]  # noisy (σ 25) copy of red, shifted
    assert 5 < np.abs(noise).mean() < 200
    same, lab = synthesize_green(image, label, np.random.default_rng(1), GreenSynthesis())
    assert same is image and lab is label


def test_green_synthesis_in_the_training_dataset(tmp_path):
    from cam_helpers import synth_data, tiny_config
    from hpasc.data.fields import FieldDataset, load_field_table

    data = synth_data(tmp_path / "s", n_images=4, size=128)
    cfg = tiny_config(data, "augment.p_mt=1.0")
    table = load_field_table(cfg.data)
    green = GreenSynthesis(cfg.augment.p_er, cfg.augment.p_mt)
    train = FieldDataset(table, [0, 1], cfg.data, "train", green_synthesis=green)
    valid = FieldDataset(table, [0, 1], cfg.data, "valid", green_synthesis=green)
    assert train[0]["label"].argmax() == MT_CLASS and train[0]["label"].sum() == 1
    assert np.array_equal(valid[0]["label"], table.y[0])  # never in validation
    with pytest.raises(ConfigError, match="augment.p_er"):
        tiny_config(data, "augment.p_er=2")


def test_small_cell_weights_follow_the_submission_rule():
    from hpasc.models.losses import consistency_loss, small_cell_weights

    mask = torch.zeros(1, 10, 10, dtype=torch.long)
    mask[0, 0:2, 0:5] = 1  # edge cell, 10 px
    mask[0, 4:8, 4:8] = 2  # interior cell, 16 px
    counts = torch.tensor([[10, 16]])
    w = small_cell_weights(mask, counts, edge_threshold=20, center_threshold=8)
    assert w.shape == (1, 1, 2) and w[0, 0].tolist() == [0.5, 1.0]
    assert small_cell_weights(mask, counts, 0, 32)[0, 0].tolist() == [1.0, 0.5]
    logits, targets = torch.zeros(1, 19, 2), torch.ones(1, 19, 2)
    valid = torch.ones(1, 19, 2, dtype=torch.bool)
    plain = consistency_loss(logits, targets, valid)
    weighted = consistency_loss(logits, targets, valid, weights=w)
    assert float(weighted) == pytest.approx(float(plain) * 0.75, rel=1e-5)


def test_area_weighting_changes_the_training_loss(tmp_path):
    from cam_helpers import synth_data, tiny_config
    from hpasc.data.fields import FieldDataset, collate_fields, load_field_table
    from hpasc.train.image_level_module import CAMConsistencyModule

    data = synth_data(tmp_path / "s", n_images=4, size=128)
    with pytest.raises(ConfigError, match="set both or neither"):
        tiny_config(data, "consistency.edge_area_threshold=100")
    cons = []
    for extra in (
        [],
        ["consistency.edge_area_threshold=1e9", "consistency.center_area_threshold=1e9"],
    ):
        cfg = tiny_config(data, "augment.cutmix_heavy_p=0", *extra)
        ds = FieldDataset(load_field_table(cfg.data), [0, 1], cfg.data, "train")
        torch.manual_seed(0)
        module = CAMConsistencyModule(cfg, 0)
        logged = {}
        module.log = lambda name, value, logged=logged, **kw: logged.update({name: float(value)})
        module.training_step(collate_fields([ds[0], ds[1]]), 0)
        cons.append(logged["train/consistency_loss"])
    assert cons[0] > 0 and cons[1] < 1e-3 * cons[0]  # huge thresholds: every weight ~0


@pytest.mark.parametrize(
    "options, factor",
    [({"remove_maxpool": True}, 2), ({"remove_first_stride2": True}, 2),
     ({"remove_maxpool": True, "remove_first_stride2": True}, 4)],
)  # fmt: skip
def test_remove_maxpool_and_first_stride2_refine_the_cam(options, factor):
    from hpasc.models.cam import CAMClassifier, CAMModelConfig

    x = torch.rand(1, 4, 64, 64)
    base = CAMClassifier(CAMModelConfig(arch="test_resnet"))(x)
    fine = CAMClassifier(CAMModelConfig(arch="test_resnet", **options))(x)
    assert fine.shape[-1] == base.shape[-1] * factor


def test_remove_maxpool_needs_a_resnet_stem():
    from hpasc.models.cam import CAMClassifier, CAMModelConfig

    with pytest.raises(ConfigError, match="remove_maxpool"):
        CAMClassifier(CAMModelConfig(arch="test_efficientnet", remove_maxpool=True))


def test_cell_affine_augmentation():
    from hpasc.runconfig.cell_level import CellLevelConfig, validate
    from hpasc.train.cell_level_module import CellLevelModule

    def module(**aug):
        cfg = CellLevelConfig()
        cfg.model.arch = "test_resnet"
        cfg.augment.d4, cfg.augment.cutmix_p = False, 0.0
        for k, v in aug.items():
            setattr(cfg.augment, k, v)
        return CellLevelModule(validate(cfg))

    x, y = torch.rand(4, 8, 24, 24), torch.zeros(4, 19)
    same, _ = module().augment(x, y, np.random.default_rng(0))
    assert torch.equal(same, x)
    turned, _ = module(angle_limit=45.0).augment(x, y, np.random.default_rng(0))
    assert turned.shape == x.shape and not torch.allclose(turned, x)


def test_non_strict_init_loads_what_fits(tmp_path):
    from hpasc.models.cell import CellClassifier, CellModelConfig, build_cell_model

    torch.manual_seed(0)
    donor = CellClassifier(CellModelConfig(arch="test_resnet"))
    state = {k: v for k, v in donor.state_dict().items() if not k.startswith("head.")}
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(InputError, match="does not fit"):
        build_cell_model(CellModelConfig(arch="test_resnet", init_from=str(path)))
    with pytest.warns(UserWarning, match="missing"):
        model = build_cell_model(
            CellModelConfig(arch="test_resnet", init_from=str(path), init_strict=False)
        )
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, donor.backbone.state_dict()[k]), k


def test_smp_unet_backbone_gives_a_full_resolution_cam():
    from hpasc.models.cam import CAMClassifier, CAMModelConfig
    from hpasc.models.cell import CellClassifier, CellModelConfig

    x = torch.rand(2, 4, 64, 64)
    model = CAMClassifier(CAMModelConfig(arch="smp-Unet-tu-test_resnet"))
    assert model.backbone.num_features == 16  # smp Unet's last decoder width
    assert model(x).shape == (2, 19, 64, 64)
    cell = CellClassifier(CellModelConfig(arch="smp-Unet-tu-test_resnet"))
    assert cell(torch.rand(2, 8, 32, 32)).shape == (2, 19)
    with pytest.raises(ConfigError, match="smp-<Arch>-<encoder>"):
        CAMClassifier(CAMModelConfig(arch="smp-Unet"))
