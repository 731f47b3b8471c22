"""End to end, as ``hodor-run`` runs: a generated H.264 clip decoded, segmented and written (masks and
overlay) through ``hodor-run``'s own functions, beside the model alone on the same frames.

- :func:`run_end_to_end` is ``hodor-run``'s path once its model is loaded: ``cli.open_input``,
  ``load_references``, ``cli.segment_to`` (the pipeline, a staged output committed whole).
- :func:`run_model_only` is ``VideoSession.run_device`` over the same frames, decoded (and on CUDA
  uploaded) beforehand, the backbone chunked as in ``hodor-run``, the masks left on the device.
- :func:`run_serial` is the same work done on one thread, each step in turn (``hodor-run`` before
  its pipeline): the baseline of ``pipeline_vs_serial.py``.
- :func:`measure_end_to_end` alternates the first two for one backend at one min_dim and times
  the backend's stages inside them; :func:`measure_startup` runs ``hodor-run`` itself in fresh
  processes (``startup_probe.py``) to see its start-up apart from its frames.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fpsbench.backends import BACKENDS, BackendSpec, BuildContext
from fpsbench.io_cost import encode_synthetic_video
from fpsbench.machine import load_average
from fpsbench.memory import PeakMemory
from fpsbench.results import (
    EndToEndOutcome,
    EndToEndResult,
    LoadAverage,
    Settings,
    StartupResult,
    StartupRun,
)
from fpsbench.synthetic import SyntheticVideo, input_size
from fpsbench.timing import Clock, StageTimedBackend
from hodor.config import HodorConfig, with_dims
from hodor.engine import cli
from hodor.engine.backends.openvino_backend import STATIC_SHAPES_AFTER
from hodor.engine.io import default_palette, open_frames
from hodor.engine.io.binding import load_references
from hodor.engine.loop.preprocess import frame_geometry
from hodor.engine.loop.session import VideoSession
from measurements import summarize

PROBE = Path(__file__).resolve().parent.parent / "startup_probe.py"
DISTINCT_FRAMES = 16  # the model-only runs cycle this many decoded frames: content does not change the cost
PROBE_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Clip:
    """A generated clip on disk: ``video`` (H.264 mp4, MPEG-4 without libx264) and its first frame's
    ``mask`` (palette PNG, object ids 1..objects)."""

    video: Path
    mask: Path
    frames: int
    height: int
    width: int
    objects: int
    codec: str


def make_clip(directory: Path, height: int, width: int, frames: int, objects: int) -> Clip:
    """The benchmark's synthetic frames at ``height x width`` as a video, and the reference mask."""
    video = SyntheticVideo(height, width, objects)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"clip-{video.height}x{video.width}-{frames}f-{objects}obj.mp4"
    codec = encode_synthetic_video(path, video, frames)
    mask = directory / f"clip-{video.height}x{video.width}-{objects}obj-00000.png"
    image = Image.fromarray(video.reference, mode="P")
    image.putpalette(default_palette())
    image.save(mask)
    return Clip(path, mask, frames, video.height, video.width, objects, codec)


@dataclass(frozen=True)
class RunTimes:
    """One run: ``frames`` in ``seconds`` of wall time; ``first_mask_s`` from the pipeline's start
    (None where the run has no pipeline); ``cpu_per_wall``: process CPU seconds per wall second."""

    frames: int
    seconds: float
    cpu_per_wall: float
    first_mask_s: float | None = None
    peak_frames_in_flight: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def run_end_to_end(
    session: VideoSession,
    clip: Clip,
    out: Path,
    overlay: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> RunTimes:
    """``hodor-run``'s path once its model is loaded, into ``out`` (staged, committed whole)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    frames = cli.open_input(str(clip.video))
    references = load_references([str(clip.mask)], frames)
    result = cli.segment_to(out, session, frames, references, overlay, on_progress or (lambda n: None))
    wall = time.perf_counter() - wall0
    first = result.first_frame_at - result.started_at if result.first_frame_at is not None else None
    return RunTimes(
        result.frames, wall, (time.process_time() - cpu0) / wall, first, result.peak_frames_in_flight
    )


def run_model_only(
    session: VideoSession,
    frames: list[Any],
    reference: np.ndarray,
    clock: Clock,
    on_frame: Callable[[], None],
) -> RunTimes:
    """``session.run_device`` over ``frames`` (arrays, or tensors already on the device); the masks
    stay where they are made; the clock waits for the device at the end."""
    clock.sync()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    count = 0
    for _ in session.run_device(frames, {0: reference}):
        count += 1
        on_frame()
    clock.sync()
    wall = time.perf_counter() - wall0
    return RunTimes(count, wall, (time.process_time() - cpu0) / wall)


def run_serial(session: VideoSession, clip: Clip, out: Path, overlay: bool = True) -> RunTimes:
    """The same work on one thread, each step in turn: decode, ``session.run``, write the mask, blend
    and encode the overlay. Nothing is staged: the files go straight into ``out``."""
    from hodor.engine.io import OverlayWriter, write_mask

    wall0, cpu0 = time.perf_counter(), time.process_time()
    frames = open_frames(clip.video)
    references = load_references([str(clip.mask)], frames)
    (out / "masks").mkdir(parents=True)
    writer = None
    if overlay:
        writer = OverlayWriter(
            out / "overlay.mp4", frames.fps, frames.height, frames.width, references.palette
        )
    kept: list[np.ndarray] = []

    def keep(source):
        for frame in source:
            kept.append(frame)
            yield frame

    count = 0
    for index, ids in enumerate(session.run(keep(frames.read()), references.masks)):
        frame = kept.pop(0)
        write_mask(out / "masks" / f"{frames.stem(index)}.png", ids, references.palette)
        if writer is not None:
            writer.write(frame, ids)
        count += 1
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - wall0
    return RunTimes(count, wall, (time.process_time() - cpu0) / wall)


def decoded_frames(clip: Clip, device: torch.device) -> list[Any]:
    """The clip's first :data:`DISTINCT_FRAMES` frames, decoded (and uploaded on CUDA), cycled to
    the clip's length."""
    distinct = [f for _, f in zip(range(DISTINCT_FRAMES), open_frames(clip.video), strict=False)]
    if device.type == "cuda":
        distinct = [torch.from_numpy(f).to(device) for f in distinct]
    return [distinct[t % len(distinct)] for t in range(clip.frames)]


def measure_end_to_end(
    name: str,
    precision: str,
    backend: Any,
    cfg: HodorConfig,
    device: torch.device,
    clip: Clip,
    min_dim: int,
    window: int,
    repeats: int,
    workdir: Path,
    on_frame: Callable[[], None],
) -> EndToEndResult:
    """``repeats`` end-to-end runs and as many model-only runs, alternated (each goes first as often
    as the other), after one untimed model-only pass to warm the session up."""
    clock = Clock(device)
    timed = StageTimedBackend(backend, clock, cfg)
    session = VideoSession(timed, temporal_window=window)  # hodor-run's chunk for the device
    frames = decoded_frames(clip, device)
    reference = SyntheticVideo(clip.height, clip.width, clip.objects).reference
    # The ring full, a whole chunk, and OpenVINO's fixed-shape compiles of the steady state made.
    warm = frames[: min(len(frames), window + 1 + max(session.chunk, STATIC_SHAPES_AFTER))]
    run_model_only(session, warm, reference, clock, lambda: None)
    timed.take()

    e2e: list[RunTimes] = []
    model: list[RunTimes] = []
    shares: list[float] = []
    before = load_average()
    with PeakMemory(device) as peak:
        for repeat in range(repeats):
            order = ("model", "e2e") if repeat % 2 == 0 else ("e2e", "model")
            for which in order:
                if which == "model":
                    model.append(run_model_only(session, frames, reference, clock, on_frame))
                    timed.take()
                    continue
                out = workdir / f"e2e-{name}-{min_dim}-{repeat}"
                run = run_end_to_end(session, clip, out, on_progress=_frames_to(on_frame))
                clock.sync()
                stage_s = sum(clock.ms(start, end) for _, start, end in timed.take()) / 1e3
                shares.append(stage_s / run.seconds)
                e2e.append(run)
                shutil.rmtree(out, ignore_errors=True)
    load = LoadAverage(before, load_average())
    assert peak.result is not None
    geometry = frame_geometry(clip.height, clip.width, cfg.input.min_dim, cfg.input.max_dim)
    return EndToEndResult(
        backend=name,
        precision=precision,
        min_dim=min_dim,
        objects=clip.objects,
        frames=clip.frames,
        chunk=session.chunk,
        input_size=[clip.height, clip.width],
        padded_size=list(geometry.padded),
        overlay=True,
        fps=summarize([r.fps for r in e2e]),
        model_only_fps=summarize([r.fps for r in model]),
        ratio=summarize([a.fps / b.fps for a, b in zip(e2e, model, strict=True)]),
        stage_share=summarize(shares),
        stage_method=(
            "CUDA events around the backend's stages (device time), summed, over the run's wall time"
            if device.type == "cuda"
            else "time.perf_counter around the backend's stages, summed, over the run's wall time "
            "(the share of the run spent computing the network; the runtime's own work is outside it)"
        ),
        first_mask_s=summarize([r.first_mask_s for r in e2e if r.first_mask_s is not None]),
        cpu_seconds_per_wall_second=summarize([r.cpu_per_wall for r in e2e]),
        peak_frames_in_flight=max(r.peak_frames_in_flight for r in e2e),
        load_average=load,
        memory=peak.result,
    )


def measure_startup(command: list[str], runs: int, workdir: Path) -> StartupResult:
    """``hodor-run`` through ``startup_probe.py`` ``runs`` times in fresh processes (the last with
    warm caches); ``command``: its arguments after the probe's path."""
    argv = [sys.executable, str(PROBE), *command]
    measured: list[StartupRun] = []
    for k in range(runs):
        out = workdir / f"startup-{k}"
        env = dict(os.environ, TQDM_DISABLE="1")
        try:
            proc = subprocess.run(
                [*argv, "--out", str(out)],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return StartupResult("failed", command, reason=f"no result within {PROBE_TIMEOUT_S} s")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            return StartupResult("failed", command, reason=f"exit status {proc.returncode}: {tail}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        measured.append(
            StartupRun(
                phases_s=data["phases_s"],
                startup_s=data["startup_s"],
                first_mask_s=data["first_mask_s"],
                frames=data["frames"],
                fps=data["fps"],
            )
        )
    return StartupResult(
        "measured", command, first=measured[0], warm=measured[-1] if len(measured) > 1 else None
    )


def _frames_to(on_frame: Callable[[], None]) -> Callable[[int], None]:
    def advance(frames: int) -> None:
        for _ in range(frames):
            on_frame()

    return advance


def startup_command(spec: BackendSpec, ctx: BuildContext, clip: Clip, min_dim: int) -> list[str]:
    """``hodor-run``'s arguments for ``clip`` with the model ``spec`` runs, the way it runs it."""
    assert spec.run_options is not None
    return [
        str(clip.video),
        "--masks",
        str(clip.mask),
        "--device",
        ctx.device.type,
        "--min-dim",
        str(min_dim),
        "--temporal-window",
        str(ctx.window),
        *spec.run_options(ctx),
    ]


def measure_all(
    settings: Settings,
    backends: dict[str, Any],
    ctx: BuildContext,
    config: HodorConfig,
    on_frame: Callable[[], None],
    say: Callable[[str], None],
    describe: Callable[[str], None],
) -> EndToEndOutcome | None:
    """Every built backend at every min_dim of the grid: end to end, model only and (with
    ``startup_frames``) ``hodor-run``'s start-up. A failure is a reason, never a figure."""
    if settings.e2e_frames <= 0:
        return None
    results: list[EndToEndResult] = []
    failures: dict[str, str] = {}
    startup_runs = 1 if settings.startup_frames and settings.e2e_repeats <= 1 else 2
    with tempfile.TemporaryDirectory(prefix="hodor-bench-e2e-") as tmp:
        work = Path(tmp)
        for min_dim in settings.min_dims:
            size = input_size(min_dim)
            clip = make_clip(work / "clips", *size, settings.e2e_frames, settings.e2e_objects)
            short = None
            if settings.startup_frames:
                short = make_clip(work / "clips", *size, settings.startup_frames, settings.e2e_objects)
            cfg = with_dims(config, min_dim, None)
            for name, backend in backends.items():
                describe(f"end to end: {name}, min_dim {min_dim}")
                spec = BACKENDS[name]
                try:
                    result = measure_end_to_end(
                        name, spec.precision, backend, cfg, ctx.device, clip, min_dim, ctx.window,
                        settings.e2e_repeats, work, on_frame,
                    )  # fmt: skip
                except Exception as exc:  # reported with the backend, never filled in
                    failures[f"{name} at min_dim {min_dim}"] = repr(exc)
                    say(f"  end to end, {name} at min_dim {min_dim}: failed: {exc!r}")
                    continue
                if short is not None and spec.run_options is not None:
                    describe(f"start-up: {name}, min_dim {min_dim}")
                    try:
                        command = startup_command(spec, ctx, short, min_dim)
                        result = replace(result, startup=measure_startup(command, startup_runs, work))
                    except Exception as exc:
                        result = replace(result, startup=StartupResult("failed", [], reason=repr(exc)))
                results.append(result)
    what = (
        f"{settings.e2e_frames} frames of the synthetic video at each min_dim (16:9), "
        f"{settings.e2e_objects} objects, H.264 ({clip.codec}); masks and overlay written"
    )
    return EndToEndOutcome(clip=what, results=results, failures=failures)
