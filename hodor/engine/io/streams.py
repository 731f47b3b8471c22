"""Live sources: frames from anything FFmpeg reads as a stream, as they arrive.

``-`` is a container on standard input (``... | hodor-run - --masks m.png``); a URL
(``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``srt://``, ...) a network stream; a
character device (``/dev/video0``) a V4L2 camera. A stream is read once, from its first frame
to its end (or until Ctrl-C); it has no declared length, so its frames are named by their
index (``00000``, ``00001``, ...) and masks bind by index. The first frame is decoded when the
stream is opened (to learn the frame size) and kept for the reader.
"""

from __future__ import annotations

import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import av
import numpy as np

from hodor.engine.io.frames import frame_rgb, stream_rotation
from hodor.engine.io.image_size import check_pixels
from hodor.engine.io.staging import Incomplete
from hodor.errors import HodorError

STDIN = "-"
NETWORK_TIMEOUT_S = (15.0, 10.0)
"""Seconds a network stream may take to open, and to deliver more data once open, before it
counts as broken off."""
DEFAULT_STREAM_FPS = Fraction(25)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_stream(text: str) -> bool:
    """Whether ``INPUT`` names a live source: ``-``, a URL, or a character device."""
    if text == STDIN or _URL.match(text):
        return True
    try:
        return stat.S_ISCHR(Path(text).stat().st_mode)
    except OSError:
        return False


def stream_stem(text: str) -> str:
    """A name for the stream's default output directory: ``stdin``, the URL's last path
    component (or host), or the device's name."""
    if text == STDIN:
        return "stdin"
    if _URL.match(text):
        parts = urlsplit(text)
        name = PurePosixPath(parts.path).stem or parts.hostname or parts.scheme
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return Path(text).name


@dataclass
class StreamSource:
    """An open live source whose frames are ``height x width``, at about ``fps``.

    ``read()`` may be called once. Its frames are named by index (:meth:`stem`).
    """

    name: str
    height: int
    width: int
    fps: Fraction
    _frames: Iterator[np.ndarray] = field(repr=False)
    _first: np.ndarray = field(repr=False)
    _container: av.container.InputContainer = field(repr=False)
    _reader: StreamReader | None = field(default=None, repr=False)
    live = True
    frame_count = None
    stems: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return self.name

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @staticmethod
    def stem(index: int) -> str:
        return f"{index:05d}"

    def read(self) -> StreamReader:
        if self._reader is not None:
            raise RuntimeError(f"{self.name} is a live stream: it can be read once")
        self._reader = StreamReader(self)
        return self._reader

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.read()

    def close(self) -> None:
        """Close a stream that was never read (a reader, once handed out, closes it itself: only
        the thread reading may, since a read may be blocked waiting for data)."""
        if self._reader is None:
            self._container.close()


class StreamReader:
    """Frames of a :class:`StreamSource` as they arrive, ``[H,W,3]`` uint8 RGB, the first one first.

    A stream that breaks off (a decoding or network error) ends the frames there; ``shortfall``
    then says so.
    """

    def __init__(self, source: StreamSource) -> None:
        self.source = source
        self.count = 0
        self.error: str | None = None
        self._pending: np.ndarray | None = source._first

    def __iter__(self) -> StreamReader:
        return self

    def __next__(self) -> np.ndarray:
        if self._pending is not None:
            frame, self._pending = self._pending, None
        else:
            try:
                frame = next(self.source._frames)
            except av.error.FFmpegError as exc:
                self.error = getattr(exc, "strerror", None) or str(exc)
                raise StopIteration from None
        self.count += 1
        return frame

    def shortfall(self) -> Incomplete | None:
        if self.error is None:
            return None
        reason = f"{self.source.name} broke off after frame {self.count} ({self.error})"
        return Incomplete(frames_written=self.count, frames_expected=None, reason=reason)

    def close(self) -> None:
        self.source._container.close()


def open_stream(text: str) -> StreamSource:
    """Open the live source ``text`` (see :func:`is_stream`) and decode its first frame."""
    if text == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise HodorError(
                "INPUT - reads a video stream from standard input, but standard input is a terminal: "
                "pipe a stream into it (for example ffmpeg ... -f mpegts - | hodor-run - ...)"
            )
        name, url, options = "standard input", "pipe:0", {}
    elif _URL.match(text):
        name, url, options = text, text, {"timeout": NETWORK_TIMEOUT_S}
    else:
        name, url, options = text, text, {"format": "v4l2"}
    try:
        container = av.open(url, mode="r", **options)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise HodorError(f"{name}: cannot open this stream ({exc.__class__.__name__}: {exc})") from None
    try:
        if not container.streams.video:
            raise HodorError(f"{name}: the stream has no video (no frames to segment)")
        stream = container.streams.video[0]
        # Slice threads only: frame threads would hold frames back, adding to every frame's latency.
        stream.thread_type = "SLICE"
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate or DEFAULT_STREAM_FPS
        frames = _decode(container, stream)
        try:
            first = next(frames, None)
        except av.error.FFmpegError as exc:
            raise HodorError(f"{name}: the stream cannot be decoded ({exc})") from None
        if first is None:
            raise HodorError(f"{name}: the stream ended before its first frame")
        check_pixels(Path(name), "frame", first.shape[1], first.shape[0])
    except BaseException:
        container.close()
        raise
    return StreamSource(
        name=name,
        height=first.shape[0],
        width=first.shape[1],
        fps=Fraction(fps),
        _frames=frames,
        _first=first,
        _container=container,
    )


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[np.ndarray]:
    rotation = stream_rotation(stream)
    for packet in container.demux(stream):
        for frame in packet.decode():
            yield frame_rgb(frame, rotation)
