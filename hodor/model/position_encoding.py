"""Sine position encoding of a feature map (DETR's, normalised over the whole map)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FEATS_PER_AXIS = 128
_TEMPERATURE = 10000.0
_EPS = 1e-6


def sine_position_encoding(fmap: Tensor) -> Tensor:
    """Position encoding for every pixel of ``fmap``.

    Positions ``1..H`` (``1..W``) are scaled by ``2*pi / (H + 1e-6)``; each axis gets
    128 features, sine and cosine interleaved, the y block first.

    Args:
        fmap: ``[B, 256, H, W]``; only its shape, device and dtype are used.

    Returns:
        ``[B, 256, H, W]`` in ``fmap``'s dtype (computed in float32, as the original).
    """
    ones = torch.ones_like(fmap[:, 0], dtype=torch.float32)  # [B, H, W], shape-derived
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + _EPS) * (2 * math.pi)
    x = x / (x[:, :, -1:] + _EPS) * (2 * math.pi)

    dim = torch.arange(_FEATS_PER_AXIS, dtype=torch.float32, device=fmap.device)
    dim = _TEMPERATURE ** (2 * (dim // 2) / _FEATS_PER_AXIS)

    def encode(p: Tensor) -> Tensor:
        p = p[..., None] / dim  # [B, H, W, 128]
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=4).flatten(3)

    pos = torch.cat((encode(y), encode(x)), dim=3).permute(0, 3, 1, 2)
    return pos.to(fmap.dtype)
