"""Parts both classifiers share: the input standardisation, the timm backbone, ``init_from``.

``cfg`` is a :class:`~hpasc.models.cam.CAMModelConfig` or a
:class:`~hpasc.models.cell.CellModelConfig` (same field names).
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def input_norm(cfg: Any) -> nn.Module:
    """``InstanceNorm2d`` of the input planes when ``cfg.instance_norm_input``, else identity.

    No affine, no running statistics: a per-image, per-channel standardisation.
    """
    return nn.InstanceNorm2d(cfg.in_chans) if cfg.instance_norm_input else nn.Identity()


def create_backbone(cfg: Any) -> nn.Module:
    """The timm model ``cfg.arch`` without classifier (``num_classes=0``), ``cfg.in_chans`` planes."""
    import timm

    return timm.create_model(
        cfg.arch,
        pretrained=cfg.pretrained,
        num_classes=0,
        in_chans=cfg.in_chans,
        **cfg.backbone_kwargs,
    )


def build_with_init(model_cls: type[M], cfg: Any, fold: int | None = None) -> M:
    """``model_cls(cfg)`` with ``cfg.init_from`` weights loaded when set (``{fold}`` → the fold)."""
    from hpasc.models.weights import load_weights

    model = model_cls(cfg)
    if cfg.init_from:
        path = cfg.init_from.replace("{fold}", str(fold if fold is not None else 0))
        load_weights(model, path)
    return model
