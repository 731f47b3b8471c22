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
    """``streams`` videos at once, each in its own session.

    CUDA: one host thread and one CUDA stream per video, so kernels of different videos may overlap.
    CPU: the videos are stepped round-robin on one thread. The CPU backends already spread one
    frame's operators over all cores, so threads would only oversubscribe them; what this measures
    there is the cost of keeping several sessions' state alive and interleaving them.
    """
    cuda = device.type == "cuda"
    cuda_streams = [torch.cuda.Stream() for _ in range(streams)] if cuda else [None] * streams
    steppers = []
    for stream in cuda_streams:
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            clock = Clock(device)
            stepper = EngineStepper(StageTimedBackend(backend, clock, config), window, video, clock, on_frame)
            stepper.warm_up(warmup)
            steppers.append(stepper)

    fps_runs: list[float] = []
    latency: list[float] = []
    for _ in range(repeats):
        per_stream = [FrameTimes() for _ in range(streams)]
        if cuda:
            torch.cuda.synchronize()
            barrier = threading.Barrier(streams)
            errors: list[BaseException] = []
            threads = [
                threading.Thread(
                    target=_stream_worker,
                    args=(cuda_streams[i], barrier, steppers[i], frames, per_stream[i], errors),
                )
                for i in range(streams)
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
                for i, stepper in enumerate(steppers):
                    stepper.run(1, per_stream[i])
            wall = time.perf_counter() - wall0
        fps_runs.append(streams * frames / wall)
        for ft in per_stream:
            latency.extend(ft.frame_ms)
    return ThroughputResult(
        backend=name,
        min_dim=video.height,
        objects=video.num_objects,
        streams=streams,
        method="one thread and CUDA stream per video" if cuda else "round-robin on one thread (CPU)",
        batched=False,
        fps_total=summarize(fps_runs),
        latency_ms=summarize(latency),
    )
