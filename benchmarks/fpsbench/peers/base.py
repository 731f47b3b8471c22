"""What every peer adapter provides, and the stepper that times any of them the same way.

A peer is another video object segmentation method, run through its own public inference API with
its network built from its own shipped config and random weights (speed does not depend on weight
values). An adapter turns "frames as ``[H, W, 3]`` uint8 RGB arrays, objects as an id mask at frame
0" into the peer's API calls and gives back an ``[H, W]`` id mask per frame on the host, as the
engine's ``VideoSession.step`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import OnFrame
from fpsbench.timing import Clock, FrameTimes

SETTINGS = ("fp32", "fast")


@dataclass(frozen=True)
class PeerSetting:
    """How a peer variant runs: ``fp32``, or the peer's own recommended fast settings."""

    name: str  # "fp32" or "fast"
    precision: str  # e.g. "fp32", "fp16 autocast", "bf16 autocast"
    autocast: torch.dtype | None
    compiled: bool


class PeerSession(Protocol):
    """One video in one peer: ``start`` consumes frame 0 and its reference, ``step`` each next frame."""

    def start(self) -> np.ndarray: ...

    def step(self) -> np.ndarray: ...

    def close(self) -> None: ...


class PeerModel(Protocol):
    """A peer's network, built once per variant and reused for every configuration of the grid."""

    description: str  # what was built, from which package and config
    setting: PeerSetting
    steady_after: int  # frames after which its memory of past frames stops growing in compute

    def processing_size(self, video: SyntheticVideo) -> tuple[int, int]: ...

    def open_session(self, video: SyntheticVideo, frames: int, workdir: str) -> PeerSession:
        """A session over the first ``frames`` frames of ``video`` (some APIs load the clip up front)."""


class PeerStepper:
    """Times a :class:`PeerSession` frame by frame, like the engine's stepper (no stage split)."""

    def __init__(self, session: PeerSession, clock: Clock, on_frame: OnFrame) -> None:
        self.session, self.clock, self.on_frame = session, clock, on_frame
        self.started = False

    def _step(self) -> None:
        if self.started:
            self.session.step()
        else:
            self.session.start()
            self.started = True
        self.on_frame()

    def warm_up(self, frames: int) -> None:
        for _ in range(max(1, frames)):
            self._step()
        self.clock.sync()

    def run(self, frames: int, times: FrameTimes) -> float:
        marks = []
        self.clock.sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(frames):
            start = self.clock.mark()
            self._step()
            marks.append((start, self.clock.mark()))
        self.clock.sync()
        wall = time.perf_counter() - wall0
        times.cpu_per_wall.append((time.process_time() - cpu0) / wall)
        times.fps.append(frames / wall)
        times.frame_ms.extend(self.clock.ms(s, e) for s, e in marks)
        return wall


def ids_from_scores(scores: torch.Tensor, object_ids: list[int]) -> np.ndarray:
    """``[N, H, W]`` per-object logits (positive = inside) -> ``[H, W]`` uint8 ids on the host."""
    best, index = scores.max(dim=0)
    lut = torch.tensor([0, *object_ids], dtype=torch.uint8, device=scores.device)
    ids = torch.where(best > 0, lut[index + 1], torch.zeros_like(lut[index]))
    return ids.cpu().numpy()
