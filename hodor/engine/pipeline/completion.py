"""Which frames are finished: every output of the frame written (its mask file, its overlay
frame). Writers finish in any order; what counts is the run of frames 0..n-1 all finished,
and how long each frame took from decoded to written.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LATENCY_SAMPLES = 100_000
"""Latencies kept for the percentiles: every frame up to this many, then a uniform sample of
them all (so that a stream running for days keeps a fixed amount of memory)."""


@dataclass(frozen=True)
class Latency:
    """Per-frame latency from decoded to written, in seconds, over ``frames`` frames."""

    frames: int
    median: float
    p95: float

    def describe(self) -> str:
        return f"latency median {self.median * 1e3:.0f} ms, p95 {self.p95 * 1e3:.0f} ms"


class _Reservoir:
    """A uniform sample of at most ``size`` values out of all those added (Vitter's algorithm R)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.size:
            self.values[slot] = value


class _InOrder:
    """Frames 0 .. ``count``-1 all done; those done beyond a gap wait in a set."""

    def __init__(self) -> None:
        self.count = 0
        self._beyond: set[int] = set()

    def add(self, index: int) -> int:
        """Mark ``index`` done; return by how many frames the run from 0 grew."""
        self._beyond.add(index)
        start = self.count
        while self.count in self._beyond:
            self._beyond.remove(self.count)
            self.count += 1
        return self.count - start


class Completion:
    """Counts each frame's finished outputs (one per name in ``parts``) and the frames in flight.

    ``decoded(index)`` when the decoder has a frame; ``finished(index, part)`` when that output
    of it is written. ``on_progress(n)`` is called (from the writers' threads) with the number of
    frames newly finished in order, every output written.
    """

    def __init__(self, parts: tuple[str, ...], on_progress: Callable[[int], None] | None = None) -> None:
        if not parts:
            raise ValueError("a frame needs at least one output")
        self.parts = parts
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._decoded_at: dict[int, float] = {}
        self._remaining: dict[int, int] = {}
        self._all = _InOrder()
        self._by_part = {part: _InOrder() for part in parts}
        self._decoded = 0
        self._finished = 0
        self._peak_in_flight = 0
        self._latency = _Reservoir(LATENCY_SAMPLES)
        self.first_finished_at: float | None = None
        self.last_finished_at: float | None = None

    def decoded(self, index: int, at: float | None = None) -> None:
        """Frame ``index`` was decoded at ``at`` (``time.perf_counter()``; default now)."""
        with self._lock:
            self._decoded_at[index] = time.perf_counter() if at is None else at
            self._remaining[index] = len(self.parts)
            self._decoded += 1
            self._peak_in_flight = max(self._peak_in_flight, self._decoded - self._finished)

    def finished(self, index: int, part: str) -> None:
        """Output ``part`` of frame ``index`` is written (or not wanted)."""
        with self._lock:
            self._by_part[part].add(index)
            self._remaining[index] -= 1
            if self._remaining[index] > 0:
                return
            del self._remaining[index]
            now = time.perf_counter()
            self._latency.add(now - self._decoded_at.pop(index))
            self._finished += 1
            if self.first_finished_at is None:
                self.first_finished_at = now
            self.last_finished_at = now
            advanced = self._all.add(index)
            if advanced and self._on_progress is not None:
                self._on_progress(advanced)  # under the lock: progress bars are not thread-safe

    def dropped(self, index: int) -> None:
        """Frame ``index`` was decoded but will not be processed (the intake was closed)."""
        with self._lock:
            if self._remaining.pop(index, None) is not None:
                self._decoded_at.pop(index, None)
                self._decoded -= 1

    @property
    def in_order(self) -> int:
        """How many frames from the first on have every output written, none missing before them."""
        with self._lock:
            return self._all.count

    def part_in_order(self, part: str) -> int:
        """:attr:`in_order` for one output only."""
        with self._lock:
            return self._by_part[part].count

    @property
    def peak_in_flight(self) -> int:
        """The most frames that were decoded and not yet finished at one time."""
        with self._lock:
            return self._peak_in_flight

    def latency(self) -> Latency | None:
        """Median and 95th percentile of the finished frames' latencies (None before any)."""
        with self._lock:
            values = np.asarray(self._latency.values, dtype=np.float64)
            seen = self._latency.seen
        if not len(values):
            return None
        median, p95 = np.percentile(values, [50, 95])
        return Latency(frames=seen, median=float(median), p95=float(p95))
