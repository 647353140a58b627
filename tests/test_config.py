from dataclasses import dataclass, field

import pytest

from hpasc.config import load_config, parse_value
from hpasc.errors import ConfigError
from hpasc.io.runs import dump_config


@dataclass
class Optim:
    lr: float = 1e-3
    epochs: int = 50
    warmup: bool = True
    milestones: list[int] = field(default_factory=lambda: [10, 20])


@dataclass
class Model:
    arch: str = "efficientnet_b2"
    pretrained: str | None = None
    instance_norm_input: bool = False


@dataclass
class Cfg:
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    n_folds: int = 5
    extra: dict = field(default_factory=dict)


def test_yaml_and_typed_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  arch: resnet18\noptim:\n  lr: 0.01\n")
    cfg = load_config(
        Cfg,
        p,
        [
            "optim.warmup=false",
            "model.instance_norm_input=True",
            "optim.epochs=3",
            "optim.milestones=[1,2,3]",
        ],
    )
    assert cfg.model.arch == "resnet18" and cfg.optim.lr == 0.01
    assert cfg.optim.warmup is False and cfg.model.instance_norm_input is True
    assert cfg.optim.epochs == 3 and cfg.optim.milestones == [1, 2, 3]


@pytest.mark.parametrize("text", ["false", "False", "0", "no"])
def test_false_words(text):
    assert load_config(Cfg, None, [f"optim.warmup={text}"]).optim.warmup is False


def test_none_and_equals_in_value():
    cfg = load_config(Cfg, None, ["model.pretrained=None"])
    assert cfg.model.pretrained is None
    cfg = load_config(Cfg, None, ["model.pretrained=runs/a=b/{fold}.ckpt"])
    assert cfg.model.pretrained == "runs/a=b/{fold}.ckpt"
    assert parse_value("null") is None and parse_value("[1, 2]") == [1, 2]


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        load_config(Cfg, None, ["optim.lrr=1"])
    p = tmp_path / "c.yaml"
    p.write_text("modle:\n  arch: x\n")
    with pytest.raises(ConfigError, match=r"'modle'.*c\.yaml.*did you mean 'model'"):
        load_config(Cfg, p)


def test_bad_type_and_bad_override():
    with pytest.raises(ConfigError, match="optim.epochs"):
        load_config(Cfg, None, ["optim.epochs=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Cfg, None, ["optim.epochs"])


def test_mapping_field_accepts_any_key():
    cfg = load_config(Cfg, None, ["extra.anything=3"])
    assert cfg.extra == {"anything": 3}


def test_dump_roundtrip(tmp_path):
    cfg = load_config(Cfg, None, ["optim.lr=0.5"])
    dump_config(cfg, tmp_path / "out.yaml")
    again = load_config(Cfg, tmp_path / "out.yaml")
    assert again == cfg


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, "nope.yaml")


@dataclass
class Source:
    images: str = ""
    masks: str = ""


@dataclass
class WithList:
    sources: list[Source] = field(default_factory=lambda: [Source("a", "b")])


def test_override_inside_list():
    cfg = load_config(WithList, None, ["sources.0.masks=/x/y"])
    assert cfg.sources[0].masks == "/x/y" and cfg.sources[0].images == "a"
    with pytest.raises(ConfigError, match="did you mean 'masks'"):
        load_config(WithList, None, ["sources.0.mask=/x"])
    with pytest.raises(ConfigError, match="index it by number"):
        load_config(WithList, None, ["sources.masks=/x"])
    with pytest.raises(ConfigError):
        load_config(WithList, None, ["sources.3.masks=/x"])


def test_none_word_kept_for_plain_strings():
    cfg = load_config(Model, None, ["arch=none", "pretrained=none"])
    assert cfg.arch == "none" and cfg.pretrained is None
