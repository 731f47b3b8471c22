"""Descriptor history of the last ``window + 1`` frames.

Decoding frame ``t`` attends to the descriptors stored for frames ``t - window … t``
(fewer at the start of a video). Older frames are never read again, so the ring
drops them: memory is bounded by the window, not by the video length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hodor.config import CHANNELS


@dataclass
class _Slot:
    fg: dict[int, torch.Tensor] = field(default_factory=dict)  # object id -> [C]
    bg: torch.Tensor | None = None  # [Qb, C]


@dataclass(frozen=True)
class History:
    """What ``decode`` reads for one frame.

    ``ids``: object ids in slot order (ascending), every object with a descriptor in the window.
    ``fg [1,I,T,C]``, ``bg [1,Qb,T,C]``: descriptors, zeros where a frame has none.
    ``fg_invalid [1,I,T]``, ``bg_invalid [1,Qb,T]``: True where a frame has none.
    ``T`` = number of frames in the window, oldest first, the current frame last.
    """

    ids: tuple[int, ...]
    fg: torch.Tensor
    bg: torch.Tensor
    fg_invalid: torch.Tensor
    bg_invalid: torch.Tensor

    @property
    def length(self) -> int:
        return self.fg.shape[2]


class DescriptorRing:
    """Object and background descriptors per frame, for the last ``window + 1`` frames.

    Frames are addressed by their absolute index in the video and must be visited in
    increasing order; writing or reading frame ``t`` forgets every frame before
    ``t - window``.
    """

    def __init__(
        self,
        window: int,
        num_bg: int,
        device: torch.device | str = "cpu",
        channels: int = CHANNELS,
    ) -> None:
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.window = window
        self.num_bg = num_bg
        self.channels = channels
        self.device = torch.device(device)
        self._slots: dict[int, _Slot] = {}
        self._latest = -1

    @property
    def capacity(self) -> int:
        return self.window + 1

    @property
    def frames(self) -> list[int]:
        """Indices of the frames currently held, oldest first."""
        return sorted(self._slots)

    def clear(self) -> None:
        self._slots.clear()
        self._latest = -1

    def _advance(self, t: int) -> None:
        if t < self._latest:
            raise ValueError(f"frame {t} is older than frame {self._latest}, already visited")
        self._latest = t
        for old in [s for s in self._slots if s < t - self.window]:
            del self._slots[old]

    def put_objects(self, t: int, ids: Sequence[int], descriptors: torch.Tensor) -> None:
        """Store (or overwrite) frame ``t``'s descriptors of ``ids``; ``descriptors [I,C]``."""
        if descriptors.shape != (len(ids), self.channels):
            raise ValueError(
                f"expected descriptors [{len(ids)},{self.channels}], got {list(descriptors.shape)}"
            )
        self._advance(t)
        slot = self._slots.setdefault(t, _Slot())
        for object_id, desc in zip(ids, descriptors.unbind(0), strict=True):
            slot.fg[int(object_id)] = desc

    def put_background(self, t: int, descriptors: torch.Tensor) -> None:
        """Store (or overwrite) frame ``t``'s background descriptors ``[Qb,C]``."""
        if descriptors.shape != (self.num_bg, self.channels):
            raise ValueError(
                f"expected descriptors [{self.num_bg},{self.channels}], got {list(descriptors.shape)}"
            )
        self._advance(t)
        self._slots.setdefault(t, _Slot()).bg = descriptors

    def history(self, t: int) -> History:
        """Descriptors of frames ``max(0, t - window) … t`` for decoding frame ``t``."""
        self._advance(t)
        frames = range(max(0, t - self.window), t + 1)
        slots = [self._slots.get(s, _Slot()) for s in frames]
        ids = tuple(sorted({i for slot in slots for i in slot.fg}))

        zeros_fg = torch.zeros(self.channels, device=self.device)
        zeros_bg = torch.zeros(self.num_bg, self.channels, device=self.device)
        if ids:
            fg = torch.stack([torch.stack([slot.fg.get(i, zeros_fg) for slot in slots], 0) for i in ids], 0)
        else:
            fg = torch.zeros(0, len(slots), self.channels, device=self.device)
        bg = torch.stack([zeros_bg if slot.bg is None else slot.bg for slot in slots], 1)  # [Qb,T,C]
        fg_invalid = torch.tensor(
            [[i not in slot.fg for slot in slots] for i in ids], dtype=torch.bool, device=self.device
        ).reshape(len(ids), len(slots))
        bg_invalid = torch.tensor([slot.bg is None for slot in slots], dtype=torch.bool, device=self.device)
        bg_invalid = bg_invalid[None].expand(self.num_bg, -1)
        return History(
            ids=ids,
            fg=fg[None],
            bg=bg[None],
            fg_invalid=fg_invalid[None],
            bg_invalid=bg_invalid[None].contiguous(),
        )
