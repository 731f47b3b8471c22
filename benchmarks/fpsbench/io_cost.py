"""Video decode and mask writing per frame, apart from any model (they depend on the input size)."""

from __future__ import annotations

import time
from pathlib import Path

import av

from fpsbench.results import IoResult, MaskWriteCost, VideoDecodeCost
from fpsbench.synthetic import SyntheticVideo
from hodor.engine.io import default_palette, open_frames, write_mask
from measurements import summarize


def encode_synthetic_video(path: Path, video: SyntheticVideo, frames: int) -> str:
    """Write ``frames`` frames of ``video`` as H.264 (MPEG-4 where no H.264 encoder); returns the codec."""
    with av.open(str(path), "w") as out:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(video.frame(t), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return codec


def measure_io(min_dim: int, frames: int, passes: int, workdir: Path) -> IoResult:
    """Per-frame cost of decoding the input video and of writing the output masks, with the engine's
    own reader and writer."""
    video = SyntheticVideo.at(min_dim, 4)
    path = workdir / f"synthetic-{video.height}x{video.width}.mp4"
    codec = encode_synthetic_video(path, video, frames)
    decode_runs = []
    for _ in range(passes):
        t0 = time.perf_counter()
        n = sum(1 for _ in open_frames(path))
        decode_runs.append((time.perf_counter() - t0) * 1e3 / max(1, n))
    palette = default_palette()
    mask_dir = workdir / "masks"
    mask_dir.mkdir(exist_ok=True)
    write_runs = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for t in range(frames):
            write_mask(mask_dir / f"{t:05d}.png", video.reference, palette)
        write_runs.append((time.perf_counter() - t0) * 1e3 / frames)
    return IoResult(
        min_dim=min_dim,
        input_size=[video.height, video.width],
        frames=frames,
        video_decode=VideoDecodeCost(codec, "hodor.engine.io.open_frames", summarize(decode_runs)),
        mask_write=MaskWriteCost("hodor.engine.io.write_mask", summarize(write_runs)),
    )
