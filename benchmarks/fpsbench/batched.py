"""Many videos in one ``BatchSession`` against the same videos in separate sessions, runs interleaved.

For each count N of ``--batch-streams``: N copies of the synthetic video (each starting at another
frame, all with the reference at their frame 0) join one batch, which steps them together (one
backbone call over their frames, one encode and one decode call per step); the same N videos also
run in N separate ``VideoSession``s (:class:`~fpsbench.throughput.SeparateSessions`). After a
warm-up of both, run i of the batch is timed before run i of the separate sessions, then run i+1,
so that load from elsewhere on the machine hits both alike; the FPS ratio is taken per pair.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from fpsbench.memory import PeakMemory
from fpsbench.results import BatchThroughputResult
from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import OnFrame
from fpsbench.throughput import SeparateSessions
from fpsbench.timing import Clock
from hodor.config import HodorConfig
from hodor.engine.loop.batch import BatchSession
from measurements import summarize


class _ConfiguredBackend:
    """A backend seen with the grid's config (its ``min_dim``), everything else passed through."""

    def __init__(self, inner: Any, config: HodorConfig) -> None:
        self._inner = inner
        self.config = config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class BatchedVideos:
    """N videos stepped together in one ``BatchSession``; each step's masks are fetched to the host."""

    def __init__(
        self,
        backend: Any,
        config: HodorConfig,
        video: SyntheticVideo,
        streams: int,
        window: int,
        clock: Clock,
    ) -> None:
        self.batch = BatchSession(_ConfiguredBackend(backend, config), temporal_window=window)
        self.video, self.clock, self.streams = video, clock, streams
        for k in range(streams):
            self.batch.add(k)
        self.t = 0

    def _step(self, on_frame: OnFrame) -> None:
        # Video k shows frame t + k: the videos differ, their cost does not.
        frames = {k: self.video.frame(self.t + k) for k in range(self.streams)}
        masks = dict.fromkeys(range(self.streams), self.video.reference) if self.t == 0 else None
        self.batch.step(frames, masks)
        self.t += 1
        for _ in range(self.streams):
            on_frame()

    def warm_up(self, steps: int, on_frame: OnFrame) -> None:
        for _ in range(max(1, steps)):
            self._step(on_frame)
        self.clock.sync()

    def run(self, steps: int, on_frame: OnFrame) -> tuple[float, list[float]]:
        """``steps`` timed steps; returns the wall seconds and each step's milliseconds."""
        step_ms = []
        self.clock.sync()
        wall0 = time.perf_counter()
        for _ in range(steps):
            start = self.clock.mark()
            self._step(on_frame)  # step() hands the masks over: the host has them when it returns
            step_ms.append(self.clock.ms(start, self.clock.mark()))
        self.clock.sync()
        return time.perf_counter() - wall0, step_ms


def measure_batched(
    name: str,
    backend: Any,
    config: HodorConfig,
    device: torch.device,
    video: SyntheticVideo,
    streams: int,
    window: int,
    warmup: int,
    frames: int,
    repeats: int,
    on_frame: OnFrame,
) -> BatchThroughputResult:
    """``streams`` videos batched against ``streams`` separate sessions: ``repeats`` interleaved timed
    runs of ``frames`` steps each, after ``warmup`` untimed steps of both."""
    clock = Clock(device)
    with PeakMemory(device) as peak:
        batched = BatchedVideos(backend, config, video, streams, window, clock)
        batched.warm_up(warmup, on_frame)
    separate = SeparateSessions(backend, config, device, video, streams, window, on_frame)
    separate.warm_up(warmup)
    batched_fps, separate_fps, step_ms, separate_ms = [], [], [], []
    for _ in range(repeats):
        wall, ms = batched.run(frames, on_frame)
        batched_fps.append(streams * frames / wall)
        step_ms += ms
        wall, per_stream = separate.run(frames)
        separate_fps.append(streams * frames / wall)
        for times in per_stream:
            separate_ms += times.frame_ms
    del batched, separate
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    assert peak.result is not None
    return BatchThroughputResult(
        backend=name,
        min_dim=video.height,
        objects=video.num_objects,
        streams=streams,
        warmup_steps=max(1, warmup),
        fps_total=summarize(batched_fps),
        video_latency_ms=summarize(step_ms),
        memory=peak.result,
        separate_method=SeparateSessions.method_on(device),
        separate_fps_total=summarize(separate_fps),
        separate_latency_ms=summarize(separate_ms),
        fps_ratio=summarize([b / s for b, s in zip(batched_fps, separate_fps, strict=True)]),
    )
