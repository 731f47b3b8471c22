"""Descriptor history of the last ``window + 1`` frames, kept on the session's device.

Decoding frame ``t`` attends to the descriptors stored for frames ``t - window … t``
(fewer at the start of a video). Older frames are never read again, so the ring
drops them: memory is bounded by the window, not by the video length.

Layout: one preallocated tensor of descriptors ``[Qb + I, S, C]`` (background rows first,
then one row per object in ascending id order) and one of invalid flags ``[Qb + I, S]``,
with ``S = window + 1`` slots; frame ``t`` lives in slot ``t % S``. Every write is an
in-place copy or fill of a slot addressed by Python integers (``fill_``, not ``x[i] = v``, which
builds a host tensor from ``v``), and a history is the slots rotated oldest first, copied
into tensors the caller provides, so that the steady state (the same objects frame after
frame) neither allocates ring storage nor moves anything between host and device: which
rows and slots hold what is bookkeeping on the host. Storage is reallocated only when the
object rows change (an object joins, or leaves the window).

Several videos stepped together keep one ring each (memory per video stays bounded by its
window) and write their histories into one padded batch (:meth:`DescriptorRing.write_history`
into the rows and slots of their batch item): the rotation is two slice copies per tensor with
a per-video offset, addressed by Python integers like every other access.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hodor.config import CHANNELS


@dataclass(frozen=True)
class History:
    """What ``decode`` reads for one frame.

    ``ids``: object ids in slot order (ascending), every object with a descriptor in the window.
    ``fg [1,I,T,C]``, ``bg [1,Qb,T,C]``: descriptors, zeros where a frame has none.
    ``fg_invalid [1,I,T]``, ``bg_invalid [1,Qb,T]``: True where a frame has none.
    ``T`` = number of frames in the window, oldest first, the current frame last.
    The tensors are contiguous copies made for this history (later writes to the ring leave them
    as they are), on the ring's device.
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
    ``t - window``. Descriptors are stored as float32 (the seam's descriptor dtype).
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
        self._latest = -1
        self._ids: list[int] = []  # object of each row after the background rows, ascending
        self._last_written: dict[int, int] = {}  # object id -> latest frame holding its descriptor
        self._slot_frame: list[int | None] = [None] * self.capacity  # frame each slot belongs to
        self._slot_used: list[bool] = [False] * self.capacity  # whether a slot holds any descriptor
        self._descriptors = self._zeros_rows(num_bg)  # [Qb+I, S, C]
        self._invalid = self._true_rows(num_bg)  # [Qb+I, S] bool

    @property
    def capacity(self) -> int:
        return self.window + 1

    @property
    def ids(self) -> tuple[int, ...]:
        """Objects with a row in the ring, ascending."""
        return tuple(self._ids)

    @property
    def frames(self) -> list[int]:
        """Indices of the frames currently held, oldest first."""
        return sorted(f for f, used in zip(self._slot_frame, self._slot_used, strict=True) if used)

    @property
    def storage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring's tensors: descriptors ``[Qb+I, S, C]`` float32 and invalid flags ``[Qb+I, S]`` bool
        (background rows first). Exposed so that tests can check they are written in place."""
        return self._descriptors, self._invalid

    def clear(self) -> None:
        self._latest = -1
        self._ids.clear()
        self._last_written.clear()
        self._slot_frame = [None] * self.capacity
        self._slot_used = [False] * self.capacity
        self._descriptors = self._zeros_rows(self.num_bg)
        self._invalid = self._true_rows(self.num_bg)

    # ------------------------------------------------------------------ writes

    @torch.inference_mode()
    def put_objects(self, t: int, ids: Sequence[int], descriptors: torch.Tensor) -> None:
        """Store (or overwrite) frame ``t``'s descriptors of ``ids``; ``descriptors [I,C]``."""
        if tuple(descriptors.shape) != (len(ids), self.channels):
            raise ValueError(
                f"expected descriptors [{len(ids)},{self.channels}], got {list(descriptors.shape)}"
            )
        self._advance(t)
        ids = [int(i) for i in ids]
        self._add_rows(ids)
        slot = t % self.capacity
        rows = [self.num_bg + self._ids.index(i) for i in ids]
        if rows and rows == list(range(rows[0], rows[0] + len(rows))):
            # The usual case (every object, in row order): one copy, one fill.
            self._descriptors[rows[0] : rows[0] + len(rows), slot].copy_(descriptors)
            self._invalid[rows[0] : rows[0] + len(rows), slot].fill_(False)
        else:
            for row, desc in zip(rows, descriptors.unbind(0), strict=True):
                self._descriptors[row, slot].copy_(desc)
                self._invalid[row, slot].fill_(False)
        for i in ids:
            self._last_written[i] = t
        self._slot_used[slot] = self._slot_used[slot] or bool(ids)

    @torch.inference_mode()
    def put_background(self, t: int, descriptors: torch.Tensor) -> None:
        """Store (or overwrite) frame ``t``'s background descriptors ``[Qb,C]``."""
        if tuple(descriptors.shape) != (self.num_bg, self.channels):
            raise ValueError(
                f"expected descriptors [{self.num_bg},{self.channels}], got {list(descriptors.shape)}"
            )
        self._advance(t)
        slot = t % self.capacity
        self._descriptors[: self.num_bg, slot].copy_(descriptors)
        self._invalid[: self.num_bg, slot].fill_(False)
        self._slot_used[slot] = True

    # ------------------------------------------------------------------ reads

    @torch.inference_mode()
    def history(self, t: int) -> History:
        """Descriptors of frames ``max(0, t - window) … t`` for decoding frame ``t``."""
        num_objects, length = self.history_size(t)
        rows = self.num_bg + num_objects
        descriptors = torch.empty(rows, length, self.channels, dtype=torch.float32, device=self.device)
        invalid = torch.empty(rows, length, dtype=torch.bool, device=self.device)
        self.write_history(t, descriptors, invalid)
        qb = self.num_bg
        # Row slices of a contiguous tensor are contiguous views: no further copy.
        return History(
            ids=tuple(self._ids),
            fg=descriptors[None, qb:],
            bg=descriptors[None, :qb],
            fg_invalid=invalid[None, qb:],
            bg_invalid=invalid[None, :qb],
        )

    def history_size(self, t: int) -> tuple[int, int]:
        """``(I, T)`` of the history for decoding frame ``t``: the objects with a descriptor in the
        window (``ids`` after this call) and the frames of the window, ``min(t, window) + 1``."""
        self._advance(t)
        return len(self._ids), min(t, self.window) + 1

    @torch.inference_mode()
    def write_history(self, t: int, descriptors: torch.Tensor, invalid: torch.Tensor) -> None:
        """Write the history for decoding frame ``t`` into ``descriptors [R,T',C]`` and ``invalid [R,T']``:
        rows ``0 … Qb+I-1`` (background first, then :attr:`ids`), slots ``0 … T-1`` oldest first
        (``I, T`` = :meth:`history_size`). Rows and slots beyond are left as they are: a batch of
        videos pads them (zeros, invalid) before each video writes its own."""
        num_objects, length = self.history_size(t)
        rows = self.num_bg + num_objects
        fits = descriptors.shape[0] >= rows and descriptors.shape[1] >= length
        if not fits or invalid.shape[:2] != descriptors.shape[:2]:
            raise ValueError(
                f"a history of {rows} rows and {length} slots does not fit descriptors "
                f"{list(descriptors.shape)} and invalid flags {list(invalid.shape)}"
            )
        oldest_slot = (t - length + 1) % self.capacity
        # Frames 0 … t sit in slots 0 … t while the window fills; once full, the oldest frame is at
        # oldest_slot and the slots are read from there round to it (a rotation in two copies).
        first = min(self.capacity - oldest_slot, length)
        pieces = [(0, oldest_slot, first)]
        if first < length:
            pieces.append((first, 0, length - first))
        for out_start, slot, count in pieces:
            descriptors[:rows, out_start : out_start + count].copy_(self._descriptors[:, slot : slot + count])
            invalid[:rows, out_start : out_start + count].copy_(self._invalid[:, slot : slot + count])

    # ------------------------------------------------------------------ bookkeeping

    def _zeros_rows(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.capacity, self.channels, dtype=torch.float32, device=self.device)

    def _true_rows(self, rows: int) -> torch.Tensor:
        return torch.ones(rows, self.capacity, dtype=torch.bool, device=self.device)

    def _advance(self, t: int) -> None:
        """Make frame ``t`` the latest: empty the slots that frames up to ``t`` take over and drop the
        rows of objects with no descriptor left in the window."""
        if t < self._latest:
            raise ValueError(f"frame {t} is older than frame {self._latest}, already visited")
        if t == self._latest:
            return
        for frame in range(max(self._latest + 1, t - self.window), t + 1):
            slot = frame % self.capacity
            if self._slot_used[slot]:
                self._descriptors[:, slot].zero_()
                self._invalid[:, slot].fill_(True)
            self._slot_frame[slot] = frame
            self._slot_used[slot] = False
        self._latest = t
        gone = [i for i in self._ids if self._last_written[i] < t - self.window]
        if gone:
            self._drop_rows(gone)

    def _add_rows(self, ids: Sequence[int]) -> None:
        """Give each new object of ``ids`` an empty row, keeping rows in ascending id order."""
        new = sorted(set(ids) - set(self._ids))
        if not new:
            return
        merged = sorted(self._ids + new)
        pieces_d, pieces_i = [self._descriptors[: self.num_bg]], [self._invalid[: self.num_bg]]
        for i in merged:
            if i in self._ids:
                row = self.num_bg + self._ids.index(i)
                pieces_d.append(self._descriptors[row : row + 1])
                pieces_i.append(self._invalid[row : row + 1])
            else:
                pieces_d.append(self._zeros_rows(1))
                pieces_i.append(self._true_rows(1))
        self._descriptors = torch.cat(pieces_d, 0)
        self._invalid = torch.cat(pieces_i, 0)
        self._ids = merged

    def _drop_rows(self, ids: Sequence[int]) -> None:
        keep = [self.num_bg + r for r, i in enumerate(self._ids) if i not in ids]
        rows = list(range(self.num_bg)) + keep
        self._descriptors = torch.cat([self._descriptors[r : r + 1] for r in rows], 0)
        self._invalid = torch.cat([self._invalid[r : r + 1] for r in rows], 0)
        self._ids = [i for i in self._ids if i not in ids]
        for i in ids:
            del self._last_written[i]
