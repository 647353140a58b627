"""Parts both classifiers share: the input standardisation, the timm backbone, ``init_from``.

``cfg`` is a :class:`~hpasc.models.cam.CAMModelConfig` or a
:class:`~hpasc.models.cell.CellModelConfig` (same field names).
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

import timm
import torch
from torch import nn

from hpasc.errors import ConfigError
from hpasc.models.weights import load_weights

M = TypeVar("M", bound=nn.Module)


def input_norm(cfg: Any) -> nn.Module:
    """``InstanceNorm2d`` of the input planes when ``cfg.instance_norm_input``, else identity.

    No affine, no running statistics: a per-image, per-channel standardisation.
    """
    return nn.InstanceNorm2d(cfg.in_chans) if cfg.instance_norm_input else nn.Identity()


SMP_PREFIX = "smp-"


class SMPFeatures(nn.Module):
    """A ``segmentation_models_pytorch`` encoder + decoder as a backbone (the original's
    ``smp-<Arch>-<encoder>`` archs, e.g. ``smp-Unet-resnet18``, ``smp-Unet-tu-<timm name>``):
    :meth:`forward_features` is the decoder's output (input resolution, ``num_features``
    planes), :meth:`forward` its spatial mean."""

    def __init__(self, name: str, in_chans: int, pretrained: bool, **kwargs: Any) -> None:
        super().__init__()
        parts = name.split("-", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"model.arch: {name!r} must be smp-<Arch>-<encoder>, e.g. smp-Unet-resnet18"
            )
        try:  # lazy: slow to import (hub, encoders) and only smp-* archs need it
            import segmentation_models_pytorch as smp
        except ImportError as exc:
            raise ConfigError(
                f"model.arch {name!r} needs segmentation-models-pytorch (pip install segmentation-models-pytorch)"
            ) from exc
        try:
            model = smp.create_model(
                parts[1],
                encoder_name=parts[2],
                encoder_weights="imagenet" if pretrained else None,
                in_channels=in_chans,
                classes=1,
                **kwargs,
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"model.arch {name!r}: {exc}") from exc
        self.encoder, self.decoder = model.encoder, model.decoder
        # the decoder's width is known only by running it: once, small, in eval mode (no
        # batch-norm statistics move)
        self.eval()
        with torch.no_grad():
            probe = self.forward_features(torch.zeros(1, in_chans, 64, 64))
        self.train()
        self.num_features = int(probe.shape[1])

    def forward_features(self, x):
        return self.decoder(self.encoder(x))

    def forward(self, x):
        return self.forward_features(x).mean(dim=(-2, -1))


def check_arch(arch: str, key: str = "model.arch") -> None:
    """:class:`ConfigError` naming ``key`` and the closest timm names unless timm knows ``arch``."""
    if arch.startswith(SMP_PREFIX) or timm.is_model(arch):
        return  # smp-<Arch>-<encoder> names are checked by SMPFeatures
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.5)
    hint = f"; closest timm names: {', '.join(close)}" if close else ""
    raise ConfigError(
        f"{key}: {arch!r} is not a timm model{hint} (all names: timm.list_models(); or smp-<Arch>-<encoder>)"
    )


def create_backbone(cfg: Any) -> nn.Module:
    """The timm model ``cfg.arch`` without classifier (``num_classes=0``), ``cfg.in_chans`` planes.

    ``smp-<Arch>-<encoder>``: a U-Net-style decoder from segmentation_models_pytorch
    (:class:`SMPFeatures`). ``cfg.remove_maxpool`` / ``cfg.remove_first_stride2`` (when the
    config has them): the original's options to halve the stride of the feature map (a finer
    CAM), see :func:`finer_stride`.
    """
    if cfg.arch.startswith(SMP_PREFIX):
        return SMPFeatures(cfg.arch, cfg.in_chans, cfg.pretrained, **cfg.backbone_kwargs)
    model = timm.create_model(
        cfg.arch,
        pretrained=cfg.pretrained,
        num_classes=0,
        in_chans=cfg.in_chans,
        **cfg.backbone_kwargs,
    )
    finer_stride(
        model,
        getattr(cfg, "remove_maxpool", False),
        getattr(cfg, "remove_first_stride2", False),
    )
    return model


def finer_stride(model: nn.Module, remove_maxpool: bool, remove_first_stride2: bool) -> None:
    """In place: ``remove_maxpool`` replaces the stem's ``maxpool`` (timm ResNet family) by an
    identity; ``remove_first_stride2`` sets the stride of the first ``Conv2d`` to 1. Each
    halves the network's output stride, as in the original."""
    if remove_maxpool:
        if not isinstance(getattr(model, "maxpool", None), nn.Module):
            raise ConfigError(
                f"model.remove_maxpool: {type(model).__name__} has no stem 'maxpool' "
                "(timm ResNet-family models have one)"
            )
        model.maxpool = nn.Identity()
    if remove_first_stride2:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise ConfigError("model.remove_first_stride2: the backbone has no Conv2d")
        conv.stride = (1, 1)


def build_with_init(model_cls: type[M], cfg: Any, fold: int | None = None) -> M:
    """``model_cls(cfg)`` with ``cfg.init_from`` weights loaded when set (``{fold}`` → the fold).

    ``cfg.init_strict`` (when the config has it) False: keys missing from the file or unknown
    to the model are skipped with a warning (PyTorch's ``strict=False``), as the original
    loaded a pretrained cell model.
    """
    model = model_cls(cfg)
    if cfg.init_from:
        path = cfg.init_from.replace("{fold}", str(fold if fold is not None else 0))
        load_weights(model, path, strict=getattr(cfg, "init_strict", True))
    return model
