"""Operations on per-channel mask maps that the runtime owns (not the network).

Channel layout of a full map ``[1+Qb+I, H, W]``: the catch-all map, ``Qb``
background maps, then one map per object in ascending id order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=False``, no antialiasing; ``x [N,C,h,w]`` -> ``[N,C,*size]``.

    The official code resizes by scale factor (``recompute_scale_factor=False``);
    with padded sizes divisible by 32 the factors 4 and 1/8 are exact, so sampling
    by size gives the same source coordinates.
    """
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def background_grid(
    rows: int, cols: int, height: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Cut ``height x width`` into a ``rows x cols`` grid of binary masks ``[rows*cols, height, width]``.

    Cells are ``height // rows`` by ``width // cols``; the last row and column take the remainder.
    Cell order is row-major.
    """
    cell_h, cell_w = height // rows, width // cols
    grid = torch.zeros(rows * cols, height, width, dtype=torch.float32, device=device)
    for r in range(rows):
        y1 = height if r == rows - 1 else (r + 1) * cell_h
        for c in range(cols):
            x1 = width if c == cols - 1 else (c + 1) * cell_w
            grid[r * cols + c, r * cell_h : y1, c * cell_w : x1] = 1.0
    return grid


def override_with_references(
    maps: torch.Tensor, num_bg_channels: int, references: Sequence[tuple[int, torch.Tensor]]
) -> torch.Tensor:
    """Replace the prediction by the reference masks where those are given.

    ``maps [1+Qb+I, H, W]``; ``num_bg_channels`` = 1 + Qb; ``references``: (object slot,
    bool mask ``[H,W]``), applied in order. At a reference's pixels every channel is
    zeroed, then the referenced object's channel is set to its mask (1 inside, 0 outside).
    Returns a new tensor.
    """
    out = maps.clone()
    for slot, mask in references:
        out = torch.where(mask[None], torch.zeros_like(out), out)
        out[num_bg_channels + slot] = mask.to(out.dtype)
    return out


def id_mask_from_maps(maps: torch.Tensor, num_bg_channels: int, object_ids: Sequence[int]) -> torch.Tensor:
    """Arg-max over channels ``maps [1+Qb+I, H, W]`` -> object ids ``[H,W]`` uint8.

    The catch-all and background channels map to 0. Ties go to the lower channel.
    """
    lookup = torch.tensor(
        [0] * num_bg_channels + [int(i) for i in object_ids], dtype=torch.uint8, device=maps.device
    )
    return lookup[maps.argmax(0)]
