"""The HPA-Cell-Segmentation network: a U-Net on a DPN-92 encoder, in plain PyTorch.

Written from the description in ``reference/hpa-unet.md`` so that the state_dict keys, their
order and their shapes equal those of the published nucleus and cell models (595 entries,
139,108,867 parameters). The network returns raw logits for 3 classes (background, border,
body); callers apply the softmax. Input height and width must be multiples of 32.
"""

from __future__ import annotations

import torch
from torch import nn

#: DPN-92 encoder: blocks per stage, residual width, dense increment per block.
DPN92_BLOCKS = (3, 4, 20, 3)
DPN92_WIDTHS = (256, 512, 1024, 2048)
DPN92_INCREMENTS = (16, 32, 24, 128)
DPN92_GROUPS = 32
DPN92_STEM = 64
DPN92_BOTTLENECK = (
    96  # width of the grouped 3x3 for the first stage; scales with the residual width
)
BN_EPS = 1e-3
#: Channels of the encoder output at each of the 5 stages (the skip connections).
ENCODER_CHANNELS = (64, 336, 704, 1552, 2688)


class BnActConv2d(nn.Module):
    """Pre-activation unit: conv(relu(bn(x))), conv without bias."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.bn(x)))


class DualPathBlock(nn.Module):
    """A DPN block: a residual path of fixed width plus a densely growing path.

    ``kind`` is ``"proj"`` (first block, stride 1 shortcut projection), ``"down"`` (first block
    of a later stage, stride 2) or ``"normal"``. Input and output are (residual, dense) pairs;
    the first block of a stage also accepts a single tensor.
    """

    def __init__(self, c_in: int, r: int, width: int, inc: int, groups: int, kind: str) -> None:
        super().__init__()
        if kind not in ("proj", "down", "normal"):
            raise ValueError(f"kind must be proj, down or normal, got {kind!r}")
        self.width = width
        stride = 2 if kind == "down" else 1
        # The shortcut's name differs by stride: it is part of the published state_dict keys.
        if kind == "proj":
            self.c1x1_w_s1 = BnActConv2d(c_in, width + 2 * inc, 1)
        elif kind == "down":
            self.c1x1_w_s2 = BnActConv2d(c_in, width + 2 * inc, 1, stride=2)
        self.projection = kind != "normal"
        self.c1x1_a = BnActConv2d(c_in, r, 1)
        self.c3x3_b = BnActConv2d(r, r, 3, stride=stride, padding=1, groups=groups)
        self.c1x1_c = BnActConv2d(r, width + inc, 1)

    def forward(
        self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        joined = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.projection:
            shortcut = self.c1x1_w_s1 if hasattr(self, "c1x1_w_s1") else self.c1x1_w_s2
            s = shortcut(joined)
            residual, dense = s[:, : self.width], s[:, self.width :]
        else:
            residual, dense = x
        y = self.c1x1_c(self.c3x3_b(self.c1x1_a(joined)))
        return residual + y[:, : self.width], torch.cat([dense, y[:, self.width :]], dim=1)


class CatBnAct(nn.Module):
    """Concatenate a (residual, dense) pair, then BatchNorm and ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        joined = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        return self.act(self.bn(joined))


class UnetDecoderBlock(nn.Module):
    """Nearest-neighbour ×2 upsampling, 3×3 conv with bias, ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class ConvBottleneck(nn.Module):
    """Fuse the decoder output with the skip tensor: concat (decoder first), 3×3 conv, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1), nn.ReLU(inplace=True)
        )

    def forward(self, decoded: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.seq(torch.cat([decoded, skip], dim=1))


def _encoder_stages() -> nn.ModuleList:
    stem = nn.Sequential(
        nn.Conv2d(3, DPN92_STEM, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(DPN92_STEM, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )
    stages: list[nn.Module] = [stem]
    c_in = DPN92_STEM
    for i, (n_blocks, width, inc) in enumerate(
        zip(DPN92_BLOCKS, DPN92_WIDTHS, DPN92_INCREMENTS, strict=True)
    ):
        r = DPN92_BOTTLENECK * width // DPN92_WIDTHS[0]
        blocks: list[nn.Module] = [nn.MaxPool2d(3, stride=2, padding=1)] if i == 0 else []
        kind = "proj" if i == 0 else "down"
        dense = 2 * inc
        for _ in range(n_blocks):
            blocks.append(DualPathBlock(c_in, r, width, inc, DPN92_GROUPS, kind))
            dense += inc
            c_in = width + dense
            kind = "normal"
        if i == len(DPN92_BLOCKS) - 1:
            blocks.append(CatBnAct(c_in))
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)


class DPNUnet(nn.Module):
    """The HPA DPN-UNet (3 input channels, 3 output logits).

    Children are registered in the order of the published state_dict: bottlenecks,
    decoder_stages, last_upsample, final, encoder_stages.
    """

    def __init__(self, out_channels: int = 3) -> None:
        super().__init__()
        f = ENCODER_CHANNELS
        self.bottlenecks = nn.ModuleList([ConvBottleneck(c) for c in reversed(f[:-1])])
        self.decoder_stages = nn.ModuleList(
            [UnetDecoderBlock(f[i + 1], f[i]) for i in range(len(f) - 1)]
        )
        self.last_upsample = UnetDecoderBlock(f[0], f[0])
        self.final = nn.Sequential(nn.Conv2d(f[0], out_channels, 3, padding=1))
        self.encoder_stages = _encoder_stages()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"input height and width must be multiples of 32, got {tuple(x.shape)}"
            )
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(torch.cat(x, dim=1) if isinstance(x, tuple) else x)
        x = skips[-1]
        for j, bottleneck in enumerate(self.bottlenecks):
            depth = len(self.bottlenecks) - 1 - j
            x = bottleneck(self.decoder_stages[depth](x), skips[depth])
        return self.final(self.last_upsample(x))
