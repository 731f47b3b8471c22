"""What a pipeline run writes: mask files and an overlay video, and the parts of a frame that
must be written before the frame counts as finished."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from hodor.engine.io.masks import write_mask

MASK = "mask"
OVERLAY = "overlay"

MaskWriter = Callable[[Path, np.ndarray, list[int]], None]
"""``write(path, ids [H,W] uint8, palette)``: writes one mask file whole (temporary name, rename)."""


def index_name(index: int) -> str:
    """The default mask name: the frame index, zero-padded to five digits."""
    return f"{index:05d}"


@dataclass(frozen=True)
class Outputs:
    """Where a run's results go.

    ``palette`` (768 values) colours the masks and the overlay. Frame ``t``'s mask is written to
    ``masks_dir/<mask_name(t)>.png`` (no mask files when ``masks_dir`` is None; a frame whose
    ``mask_name`` is None gets none). ``overlay`` is the path of the overlay video (None: no
    overlay), at ``fps`` frames per second. ``write_mask`` writes one mask file whole.
    """

    palette: list[int]
    masks_dir: Path | None = None
    mask_name: Callable[[int], str | None] = index_name
    overlay: Path | None = None
    fps: Fraction = field(default_factory=lambda: Fraction(24))
    write_mask: MaskWriter = write_mask

    @property
    def parts(self) -> tuple[str, ...]:
        """The outputs each frame has (a frame with neither still counts as one part, its mask)."""
        return (MASK, OVERLAY) if self.overlay is not None else (MASK,)
