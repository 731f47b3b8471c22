"""End to end, as ``hodor-run`` runs: a generated H.264 clip decoded, segmented and written (masks and
overlay) through ``hodor-run``'s own functions, timed apart from the model's loading.

Used by ``pipeline_vs_serial.py`` (the pipeline against one thread doing everything in turn) and
by ``fps.py`` (end-to-end FPS beside the model-only FPS). Imports the engine lazily, so that a
partial install is reported rather than crashing the benchmark.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLIP_FPS = 25


def clip_frame(t: int, height: int, width: int, objects: int) -> np.ndarray:
    """Frame ``t`` ``[H,W,3]`` uint8: a textured background and ``objects`` discs drifting right."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            110 + 60 * np.sin(xx / 37.0 + t / 9.0),
            120 + 50 * np.cos(yy / 23.0 - t / 7.0),
            115 + 40 * np.sin((xx + yy) / 51.0),
        ],
        axis=-1,
    )
    for k, (cy, cx, radius) in enumerate(_discs(height, width, objects)):
        inside = (yy - cy) ** 2 + (xx - cx - 2 * t) ** 2 <= radius**2
        image[inside] = ((60 * k + 200) % 256, (90 * k + 40) % 256, (150 * k + 90) % 256)
    return np.clip(image, 0, 255).astype(np.uint8)


def _discs(height: int, width: int, objects: int) -> list[tuple[float, float, float]]:
    cols = math.ceil(math.sqrt(objects * width / height))
    rows = math.ceil(objects / cols)
    out = []
    for k in range(objects):
        r, c = divmod(k, cols)
        radius = 0.3 * min(height / rows, width / cols)
        out.append(((r + 0.5) * height / rows, (c + 0.4) * width / cols, radius))
    return out


def reference_ids(height: int, width: int, objects: int) -> np.ndarray:
    """Frame 0's object ids ``[H,W]`` uint8 (1..objects), the discs of :func:`clip_frame`."""
    yy, xx = np.mgrid[0:height, 0:width]
    ids = np.zeros((height, width), np.uint8)
    for k, (cy, cx, radius) in enumerate(_discs(height, width, objects)):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k + 1
    return ids


@dataclass(frozen=True)
class Clip:
    """A generated clip on disk: ``video`` (H.264 mp4) and its first frame's ``mask`` (palette PNG)."""

    video: Path
    mask: Path
    frames: int
    height: int
    width: int
    objects: int


def make_clip(directory: Path, frames: int, height: int, width: int, objects: int) -> Clip:
    """Write ``clip-HxW-N.mp4`` (H.264, or MPEG-4 where PyAV has no libx264) and ``00000.png``."""
    import av
    from PIL import Image

    from hodor.engine.io import default_palette

    directory.mkdir(parents=True, exist_ok=True)
    video = directory / f"clip-{height}x{width}-{frames}.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream(
            "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=CLIP_FPS
        )
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(frames):
            image = av.VideoFrame.from_ndarray(clip_frame(t, height, width, objects), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    mask = directory / "00000.png"
    image = Image.fromarray(reference_ids(height, width, objects), mode="P")
    image.putpalette(default_palette())
    image.save(mask)
    return Clip(video, mask, frames, height, width, objects)


@dataclass(frozen=True)
class EndToEnd:
    """One end-to-end pass: ``frames`` written in ``seconds`` (first frame in to last written);
    ``first_mask_s`` from the start to the first frame written."""

    frames: int
    seconds: float
    first_mask_s: float | None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def run_end_to_end(session: Any, clip: Clip, out: Path, overlay: bool = True) -> EndToEnd:
    """``hodor-run``'s path once its model is loaded: open the clip, bind the mask, segment through
    the pipeline into a staged ``out`` (masks and overlay), committed whole."""
    from hodor.engine import cli
    from hodor.engine.io.binding import load_references

    frames = cli.open_input(str(clip.video))
    references = load_references([str(clip.mask)], frames)
    result = cli.segment_to(out, session, frames, references, overlay)
    first = result.first_frame_at - result.started_at if result.first_frame_at is not None else None
    return EndToEnd(result.frames, result.seconds, first)


def run_serial(session: Any, clip: Clip, out: Path, overlay: bool = True) -> EndToEnd:
    """The same work on one thread, each step in turn: decode, ``session.run``, write the mask, blend
    and encode the overlay (``hodor-run`` before its pipeline): the baseline the pipeline is held to."""
    from hodor.engine.io import OverlayWriter, open_frames, write_mask
    from hodor.engine.io.binding import load_references

    start = time.perf_counter()
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

    count, first = 0, None
    for index, ids in enumerate(session.run(keep(frames.read()), references.masks)):
        frame = kept.pop(0)
        write_mask(out / "masks" / f"{frames.stem(index)}.png", ids, references.palette)
        if writer is not None:
            writer.write(frame, ids)
        count += 1
        if first is None:
            first = time.perf_counter() - start
    if writer is not None:
        writer.close()
    return EndToEnd(count, time.perf_counter() - start, first)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="hodor-e2e-")
