"""The overlay's blend on the device: object colours over the frame, as
:func:`hodor.engine.io.overlay.blend_overlay` computes it on the host, bit for bit.

The same float32 operations in the same order (``frame * (1 - alpha) + colour * alpha``,
``+ 0.5``, truncation to uint8), each rounded to float32 as numpy rounds it.
"""

from __future__ import annotations

import numpy as np
import torch

OVERLAY_ALPHA = 0.5


class DeviceBlender:
    """Blends ``ids [H,W]`` uint8 over ``frame [H,W,3]`` uint8 on their device with ``palette``
    (768 values: object ``i``'s colour at ``3i .. 3i+2``), uploaded once."""

    def __init__(self, palette: list[int], device: torch.device, alpha: float = OVERLAY_ALPHA) -> None:
        colours = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
        if colours.shape[0] < 256:
            colours = np.concatenate([colours, np.zeros((256 - colours.shape[0], 3), np.float32)])
        self.colours = torch.from_numpy(colours[:256].copy()).to(device)  # [256,3] float32
        self.alpha = alpha

    def __call__(self, frame: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``frame [H,W,3]`` uint8, ``ids [H,W]`` uint8 -> the blended frame ``[H,W,3]`` uint8."""
        colours = self.colours[ids.long()]  # [H,W,3]
        blended = frame.float() * (1 - self.alpha) + colours * self.alpha
        return torch.where(ids[..., None] > 0, blended + 0.5, frame.float()).to(torch.uint8)
