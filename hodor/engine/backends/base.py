"""The three-stage seam every backend implements (docs/design.md, "Stages").

All tensors crossing the seam are ``torch.Tensor`` on the backend's ``device``;
a backend that computes elsewhere (ONNX Runtime on numpy) converts at its edge.
Shapes: C = 256, ``h, w`` = the 1/8 map of the padded frame, ``I`` objects,
``Qb`` background descriptors, ``T`` history slots (min(t, window) + 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from hodor.config import HodorConfig, with_dims


@runtime_checkable
class Backend(Protocol):
    name: str
    """What ran, for the summary line: ``torch``, ``onnxruntime``, ``tensorrt``."""
    device: torch.device
    config: HodorConfig

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` f32, normalised, padded to /32
        -> ``f4 [B,256,H/4,W/4]``, ``f8 [B,256,H/8,W/8]``."""
        ...

    def encode(
        self, f8: torch.Tensor, fg_masks: torch.Tensor, bg_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f8 [1,256,h,w]``, ``fg_masks [1,I,h,w]``, ``bg_masks [1,Qb,h,w]`` (probabilities)
        -> ``fg_desc [1,I,256]``, ``bg_desc [1,Qb,256]``."""
        ...

    def decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        """``f4 [1,256,2h,2w]``, ``f8 [1,256,h,w]``, ``fg_hist [1,I,T,256]``, ``bg_hist [1,Qb,T,256]``,
        ``fg_invalid [1,I,T]`` bool, ``bg_invalid [1,Qb,T]`` bool -> ``logits [1,1+Qb+I,2h,2w]``
        (catch-all, background, objects)."""
        ...

    def check_limits(self, num_objects: int, history: int, height: int, width: int) -> None:
        """Raise ``HodorError`` naming the limit (and how to lift it) if a call would exceed it.

        The session calls it before every ``encode`` (``history`` = 1) and ``decode``;
        ``height``/``width`` are the padded frame's (multiples of 32), ``num_objects`` is I.
        """
        ...


@dataclass(frozen=True)
class ConfigOverrides:
    """What the command line changes in the model's config: ``--config``, ``--min-dim``, ``--max-dim``."""

    config_path: Path | None = None  # default: config.yaml beside the checkpoint
    min_dim: int | None = None
    max_dim: int | None = None

    def apply(self, cfg: HodorConfig) -> HodorConfig:
        return with_dims(cfg, self.min_dim, self.max_dim)


ExportOpener = Callable[[Path, str | None, ConfigOverrides | None], Backend]
"""``(export_dir, device, overrides) -> Backend`` for an export directory; raises ``HodorError``
when it cannot run here."""
