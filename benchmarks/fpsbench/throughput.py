"""Several videos at once on one engine backend, each in its own session (not batched)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import torch

from fpsbench.results import ThroughputResult
from fpsbench.single_stream import EngineStepper
from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import OnFrame
from fpsbench.timing import Clock, FrameTimes, StageTimedBackend
from hodor.config import HodorConfig
from measurements import summarize


def _stream_worker(
    stream: torch.cuda.Stream,
    barrier: threading.Barrier,
    stepper: EngineStepper,
    frames: int,
    times: FrameTimes,
    errors: list[BaseException],
) -> None:
    try:
        with torch.cuda.stream(stream):
            barrier.wait()
            stepper.run(frames, times)
    except BaseException as exc:  # re-raised on the main thread
        errors.append(exc)


class SeparateSessions:
    """``streams`` videos at once, each in its own ``VideoSession``.

    CUDA: one host thread and one CUDA stream per video, so kernels of different videos may overlap.
    CPU: the videos are stepped round-robin on one thread. The CPU backends already spread one
    frame's operators over all cores, so threads would only oversubscribe them; what this measures
    there is the cost of keeping several sessions' state alive and interleaving them.
    """

    def __init__(
        self,
        backend: Any,
        config: HodorConfig,
        device: torch.device,
        video: SyntheticVideo,
        streams: int,
        window: int,
        on_frame: OnFrame,
    ) -> None:
        self.cuda = device.type == "cuda"
        self.streams = streams
        self.cuda_streams = [torch.cuda.Stream() for _ in range(streams)] if self.cuda else [None] * streams
        self.steppers = []
        for stream in self.cuda_streams:
            with torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext():
                clock = Clock(device)
                timed = StageTimedBackend(backend, clock, config)
                self.steppers.append(EngineStepper(timed, window, video, clock, on_frame))

    @property
    def method(self) -> str:
        return self.method_on(torch.device("cuda" if self.cuda else "cpu"))

    @staticmethod
    def method_on(device: torch.device) -> str:
        """How the sessions share ``device``, in words."""
        if device.type == "cuda":
            return "one thread and CUDA stream per video"
        return "round-robin on one thread (CPU)"

    def warm_up(self, frames: int) -> None:
        for stream, stepper in zip(self.cuda_streams, self.steppers, strict=True):
            with torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext():
                stepper.warm_up(frames)

    def run(self, frames: int) -> tuple[float, list[FrameTimes]]:
        """``frames`` frames of every video; returns the wall seconds and each video's frame times."""
        per_stream = [FrameTimes() for _ in range(self.streams)]
        if self.cuda:
            torch.cuda.synchronize()
            barrier = threading.Barrier(self.streams)
            errors: list[BaseException] = []
            threads = [
                threading.Thread(
                    target=_stream_worker,
                    args=(self.cuda_streams[i], barrier, self.steppers[i], frames, per_stream[i], errors),
                )
                for i in range(self.streams)
            ]
            wall0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            torch.cuda.synchronize()
            wall = time.perf_counter() - wall0
            if errors:
                raise errors[0]
        else:
            wall0 = time.perf_counter()
            for _ in range(frames):
                for i, stepper in enumerate(self.steppers):
                    stepper.run(1, per_stream[i])
            wall = time.perf_counter() - wall0
        return wall, per_stream


def measure_throughput(
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
) -> ThroughputResult:
    """``streams`` videos at once, each in its own session (see :class:`SeparateSessions`)."""
    sessions = SeparateSessions(backend, config, device, video, streams, window, on_frame)
    sessions.warm_up(warmup)
    fps_runs: list[float] = []
    latency: list[float] = []
    for _ in range(repeats):
        wall, per_stream = sessions.run(frames)
        fps_runs.append(streams * frames / wall)
        for ft in per_stream:
            latency.extend(ft.frame_ms)
    return ThroughputResult(
        backend=name,
        min_dim=video.height,
        objects=video.num_objects,
        streams=streams,
        method=sessions.method,
        batched=False,
        fps_total=summarize(fps_runs),
        latency_ms=summarize(latency),
    )
