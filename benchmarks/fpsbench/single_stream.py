"""The single-stream steady state: systems stepping one video each, their timed runs interleaved.

Each system is warmed up (so its memory of past frames is full and every code path has run), then
``repeats`` runs of ``frames`` consecutive frames are timed, run 1 of every system, then run 2, ...:
a burst of load from elsewhere on the machine hits all of them alike, and per-run ratios stay fair.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from fpsbench.results import EngineResult, LoadAverage, MemoryPeak, Ratio, StageLatency
from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import FrameStepper, OnFrame
from fpsbench.timing import STAGES, Clock, FrameTimes, StageTimedBackend
from hodor.engine.loop.preprocess import FrameGeometry
from hodor.engine.loop.session import VideoSession
from measurements import summarize


class EngineStepper:
    """One engine backend's ``VideoSession`` on one video, its stages timed at the seam."""

    def __init__(
        self, timed: StageTimedBackend, window: int, video: SyntheticVideo, clock: Clock, on_frame: OnFrame
    ) -> None:
        self.session = VideoSession(timed, temporal_window=window)
        self.timed, self.video, self.clock, self.on_frame = timed, video, clock, on_frame
        self.t = 0
        self.timed_frames: list[int] = []  # indices of the frames that were timed

    def _step(self) -> None:
        mask = self.video.reference if self.t == 0 else None
        self.session.step(self.video.frame(self.t), mask)
        self.t += 1
        self.on_frame()

    def warm_up(self, frames: int) -> None:
        for _ in range(max(1, frames)):
            self._step()
        self.clock.sync()
        self.timed.take()

    def run(self, frames: int, times: FrameTimes) -> float:
        marks = []
        self.clock.sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(frames):
            self.timed_frames.append(self.t)
            start = self.clock.mark()
            self._step()
            marks.append((start, self.clock.mark(), self.timed.take()))
        self.clock.sync()
        wall = time.perf_counter() - wall0
        times.cpu_per_wall.append((time.process_time() - cpu0) / wall)
        times.fps.append(frames / wall)
        for start, end, stage_marks in marks:
            times.frame_ms.append(self.clock.ms(start, end))
            per = dict.fromkeys(STAGES, 0.0)
            for stage, s0, s1 in stage_marks:
                per[stage] += self.clock.ms(s0, s1)
                times.calls[stage] += 1
            for stage in STAGES:
                times.stage_ms[stage].append(per[stage])
        return wall


def interleave(steppers: Mapping[str, FrameStepper], frames: int, repeats: int) -> dict[str, FrameTimes]:
    """``repeats`` timed runs of ``frames`` frames per system, run i of every system before run i+1."""
    times = {name: FrameTimes() for name in steppers}
    for _ in range(repeats):
        for name, stepper in steppers.items():
            stepper.run(frames, times[name])
    return times


def engine_result(
    backend: str,
    precision: str,
    stepper: EngineStepper,
    times: FrameTimes,
    geometry: FrameGeometry,
    min_dim: int,
    objects: int,
    window: int,
    warmup: int,
    memory: MemoryPeak,
    load: LoadAverage,
) -> EngineResult:
    runtime = [f - sum(times.stage_ms[s][i] for s in STAGES) for i, f in enumerate(times.frame_ms)]
    stage = {s: summarize(times.stage_ms[s]) for s in STAGES}
    return EngineResult(
        backend=backend,
        precision=precision,
        min_dim=min_dim,
        objects=objects,
        input_size=list(geometry.size),
        padded_size=list(geometry.padded),
        warmup_frames=warmup,
        # Decode's history length over the timed frames: constant once the ring is full.
        history_slots=sorted({min(t, window) + 1 for t in stepper.timed_frames}),
        fps=summarize(times.fps),
        latency_ms=StageLatency(frame=summarize(times.frame_ms), runtime=summarize(runtime), **stage),
        stage_calls_per_frame={s: times.calls[s] / max(1, len(times.frame_ms)) for s in STAGES},
        cpu_seconds_per_wall_second=summarize(times.cpu_per_wall),
        load_average=load,
        memory=memory,
    )


def paired_ratio(
    backend: str,
    backend_fps: list[float],
    reference: str,
    reference_fps: list[float],
    min_dim: int,
    objects: int,
) -> Ratio:
    """Runs were interleaved, so run i of both systems saw the same moment of the machine."""
    paired = [a / b for a, b in zip(backend_fps, reference_fps, strict=False)]
    of_medians = summarize(backend_fps).median / summarize(reference_fps).median  # type: ignore[operator]
    return Ratio(
        backend=backend,
        reference=reference,
        min_dim=min_dim,
        objects=objects,
        fps_ratio=summarize(paired),
        fps_ratio_of_medians=of_medians,
    )
