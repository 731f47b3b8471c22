"""Feature extractor: Swin-Tiny + FPN + a GroupNorm per level, keeping the 1/4 and 1/8 maps.

The official extractor also builds the 1/16, 1/32 and 1/64 outputs; nothing in
inference reads them, so their output convolutions and norms are loaded (the
checkpoint has them) but not run. The 1/16 and 1/32 laterals are still needed:
they feed the top-down path into the 1/8 and 1/4 levels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from hodor.config import CHANNELS
from hodor.model.swin import SwinTransformer

FPN_LEVELS = 5  # 1/4 .. 1/32 from the backbone, 1/64 by max-pooling (unused)


def _conv_module(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    # A ``.conv`` child reproduces the official key names (``lateral_convs.0.conv.weight``).
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)))


class FPN(nn.Module):
    """1x1 laterals, nearest top-down upsampling to each lower level's size, 3x3 output convs."""

    def __init__(self, in_channels: list[int], out_channels: int = CHANNELS) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(_conv_module(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(_conv_module(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, inputs: list[Tensor], num_outputs: int) -> list[Tensor]:
        """Stage outputs, finest first -> the ``num_outputs`` finest FPN levels, ``[B, 256, H_i, W_i]``."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            size = laterals[i - 1].shape[-2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=size, mode="nearest")
        return [self.fpn_convs[i](laterals[i]) for i in range(num_outputs)]


class FeatureExtractor(nn.Module):
    """``images [B, 3, H, W]`` (H, W multiples of 32)
    -> ``f4 [B, 256, H/4, W/4]``, ``f8 [B, 256, H/8, W/8]``."""

    def __init__(self) -> None:
        super().__init__()
        swin = SwinTransformer()
        self.bb_fpn = nn.ModuleList([swin, FPN(swin.num_features)])
        self.norm_layers = nn.ModuleList(nn.GroupNorm(16, CHANNELS) for _ in range(FPN_LEVELS))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        swin, fpn = self.bb_fpn
        f4, f8 = fpn(swin(images), num_outputs=2)
        return self.norm_layers[0](f4), self.norm_layers[1](f8)
