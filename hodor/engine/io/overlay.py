"""``overlay.mp4``: the masks blended over the frames."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from hodor.engine.io.files import temporary_beside
from hodor.errors import HodorError

if TYPE_CHECKING:
    import torch


def blend_overlay(frame: np.ndarray, ids: np.ndarray, palette: list[int], alpha: float = 0.5) -> np.ndarray:
    """Objects' palette colours blended over ``frame [H,W,3]`` uint8 where ``ids [H,W]`` is non-zero."""
    colours = np.asarray(palette, dtype=np.float32).reshape(-1, 3)[ids]
    blended = frame.astype(np.float32) * (1 - alpha) + colours * alpha
    return np.where(ids[..., None] > 0, blended + 0.5, frame).astype(np.uint8)


def overlay_encoder_threads(device: torch.device) -> int:
    """The overlay encoder's threads beside a network on ``device``: FFmpeg's choice (0) beside a
    GPU; one on the CPU, where the network keeps every core busy and the encoder's frame threads
    would pre-empt torch's workers (480p, 4 objects, 2 cores: the pipeline ran at 0.94x a single
    thread with them, 1.0x without an overlay)."""
    return 1 if device.type == "cpu" else 0


class OverlayWriter:
    """``overlay.mp4``: the masks over the frames at the source frame rate (H.264 where available).

    The encoder runs on its own threads (frame threading, as many as FFmpeg picks for the
    machine, or ``threads``), so a caller that feeds it from one thread keeps several cores busy
    encoding.
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction,
        height: int,
        width: int,
        palette: list[int],
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.palette = palette
        self._tmp = temporary_beside(self.path)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            self._stream = self._container.add_stream(codec, rate=fps)
        except (av.error.FFmpegError, OSError) as exc:
            self._tmp.unlink(missing_ok=True)
            raise HodorError(f"cannot write {self.path}: {exc}") from None
        # 4:2:0 chroma needs even sizes; the odd last row/column is repeated.
        self._stream.height = height + height % 2
        self._stream.width = width + width % 2
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            self._stream.bit_rate = 4_000_000
        self._stream.codec_context.thread_type = "FRAME"
        self._stream.codec_context.thread_count = threads  # 0: FFmpeg's choice for this machine

    def write(self, frame: np.ndarray, ids: np.ndarray) -> None:
        """Blend ``ids [H,W]`` over ``frame [H,W,3]`` uint8 and append it to the video."""
        self.write_image(blend_overlay(frame, ids, self.palette))

    def write_image(self, image: np.ndarray) -> None:
        """Append an already blended frame ``[H,W,3]`` uint8 RGB to the video."""
        pad_h, pad_w = self._stream.height - image.shape[0], self._stream.width - image.shape[1]
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush, close and move the finished file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError):
            pass  # already failing; the temporary file goes either way
        self._tmp.unlink(missing_ok=True)
