"""The three-stage seam every backend implements (docs/design.md, "Stages").

All tensors crossing the seam are ``torch.Tensor`` on the backend's ``device``;
a backend that computes elsewhere (ONNX Runtime on numpy) converts at its edge.
Shapes: C = 256, ``h, w`` = the 1/8 map of the padded frame, ``I`` objects,
``Qb`` background descriptors, ``T`` history slots (min(t, window) + 1).

``encode`` and ``decode`` take one frame of each of ``B >= 1`` videos (streams) of the same
padded size. Videos with fewer objects than the batch's ``I`` are padded with objects marked
invalid (``fg_invalid``), videos with a shorter history than its ``T`` with slots marked invalid;
each batch item then computes what the video alone computes (up to rounding: see
docs/design.md, "Stages"). A backend needs nothing else to serve many videos at once.
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

    # Optional: ``backbone_transient(images)``, as ``backbone`` but its features may be the
    # backend's own buffers, valid until its next ``backbone`` or ``backbone_transient`` call.
    # The loop takes it (``hodor.engine.loop.frame_step.transient_features``) where it uses the
    # features within one step; a backend without it is called through ``backbone``.

    def encode(
        self,
        f8: torch.Tensor,
        fg_masks: torch.Tensor,
        bg_masks: torch.Tensor,
        fg_invalid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f8 [B,256,h,w]``, ``fg_masks [B,I,h,w]``, ``bg_masks [B,Qb,h,w]`` (probabilities),
        ``fg_invalid [B,I]`` bool (True: a padding object; None: no padding)
        -> ``fg_desc [B,I,256]``, ``bg_desc [B,Qb,256]`` float32.

        The encoder's self-attention mixes the descriptors of a frame: a padding object must be
        marked in ``fg_invalid`` so that no other descriptor attends to it. Its own descriptor is
        whatever the network makes of an empty mask; the caller drops it."""
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
        """``f4 [B,256,2h,2w]``, ``f8 [B,256,h,w]``, ``fg_hist [B,I,T,256]``, ``bg_hist [B,Qb,T,256]``,
        ``fg_invalid [B,I,T]`` bool, ``bg_invalid [B,Qb,T]`` bool -> ``logits [B,1+Qb+I,2h,2w]``
        float32 (catch-all, background, objects). Padding objects and slots are all invalid; a
        padding object's logits are -inf."""
        ...

    def check_limits(
        self, num_objects: int, history: int, height: int, width: int, streams: int = 1
    ) -> None:
        """Raise ``HodorError`` naming the limit (and how to lift it) if a call would exceed it.

        The loop calls it before every ``encode`` (``history`` = 1) and ``decode``;
        ``height``/``width`` are the padded frame's (multiples of 32), ``num_objects`` is I and
        ``streams`` is B, the videos in the call.
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
