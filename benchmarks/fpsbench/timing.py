"""Clocks, and the wrapper that times a backend's stages at the seam.

CUDA: CUDA events on the current stream (they time the device, not the launches). CPU:
``time.perf_counter``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hodor.config import HodorConfig

STAGES = ("backbone", "encode", "decode")


class Clock:
    """Marks points in time and turns pairs of marks into milliseconds once the work is done."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.current_stream().synchronize()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1e3


@dataclass
class FrameTimes:
    """What the timed runs of one system collected, frame by frame."""

    frame_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    # Process CPU seconds per wall second of each run: about the thread count on an idle machine,
    # lower when other processes take the cores (the figures then say so themselves).
    cpu_per_wall: list[float] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)  # one per run


class StageTimedBackend:
    """Wraps a backend: times each stage call, passes everything else through untouched.

    Timing at the seam means every backend is split the same way without instrumenting its inside.
    ``config`` replaces the backend's: the session takes the processing size (``min_dim``) from it,
    so one built backend serves every size of the grid.
    """

    def __init__(self, inner: Any, clock: Clock, config: HodorConfig) -> None:
        self._inner = inner
        self._clock = clock
        self.config = config
        self._marks: list[tuple[str, Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = self._clock.mark()
        out = fn(*args)
        self._marks.append((stage, start, self._clock.mark()))
        return out

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._timed("backbone", self._inner.backbone, images)

    def backbone_transient(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Timed as the backbone: the loop's features valid until the next backbone call.
        inner = getattr(self._inner, "backbone_transient", self._inner.backbone)
        return self._timed("backbone", inner, images)

    def encode(
        self, f8: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, fg_invalid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._timed("encode", self._inner.encode, f8, fg, bg, fg_invalid)

    def decode(self, *args: torch.Tensor) -> torch.Tensor:
        return self._timed("decode", self._inner.decode, *args)

    def take(self) -> list[tuple[str, Any, Any]]:
        marks, self._marks = self._marks, []
        return marks
