"""Reading frames: a video file (anything PyAV decodes, as ``rgb24``, with the rotation of its
display matrix applied) or a directory of jpg/png images sorted by name.

A video that stops decoding early (a file cut short, damaged data) ends the frames there
instead of raising, so that every frame before the damage is still processed; the
:class:`FrameReader` that was iterated says how many frames of how many it gave and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hodor.engine.io.image_size import bomb_error, check_pixels
from hodor.engine.io.staging import Incomplete
from hodor.errors import HodorError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DIRECTORY_FPS = Fraction(24)
"""Frame rate of the overlay for a directory of frames, which carries none (DAVIS is 24 fps)."""
MIN_INDEX_DIGITS = 5


def rotate_to_display(frame: np.ndarray, rotation: float) -> np.ndarray:
    """Turn a decoded frame ``[H,W,C]`` upright: ``rotation`` is the display matrix's
    counter-clockwise angle in degrees (PyAV's ``VideoFrame.rotation``), a multiple of 90."""
    quarter_turns = int(round(rotation / 90.0)) % 4
    if quarter_turns == 0:
        return frame
    return np.ascontiguousarray(np.rot90(frame, quarter_turns))


@dataclass(frozen=True)
class FrameSource:
    """The frames of one input: ``len()`` frames of ``height x width``, named by ``stems``.

    A file or a directory, read from its start as often as wanted (live sources are
    :class:`hodor.engine.io.streams.StreamSource`).
    """

    live = False

    path: Path
    kind: str  # "video" or "directory"
    stems: tuple[str, ...]
    height: int
    width: int
    fps: Fraction
    files: tuple[Path, ...] = ()  # directory inputs only

    def __len__(self) -> int:
        return len(self.stems)

    @property
    def frame_count(self) -> int:
        """The frames the input declares (a video may decode fewer, or more)."""
        return len(self.stems)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def stem(self, index: int) -> str:
        """Output name of frame ``index`` (a video may decode more frames than its container says)."""
        if index < len(self.stems):
            return self.stems[index]
        return f"{index:0{len(self.stems[-1])}d}"

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames ``[H,W,3]`` uint8 RGB, in order, decoded one at a time (see :meth:`read`)."""
        return self.read()

    def read(self) -> FrameReader:
        """An iterator over the frames that records how the reading ended."""
        return FrameReader(self)


class FrameReader:
    """One pass over a :class:`FrameSource`: yields frames ``[H,W,3]`` uint8 RGB and counts them.

    A video that cannot be read to its declared end stops early; once the iteration is over,
    :meth:`shortfall` says so (None when every frame was read).
    """

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.count = 0
        self.packets = 0  # video packets demuxed (with data)
        self.decode_error: str | None = None
        if source.kind == "directory":
            self._frames = self._read_directory()
        else:
            self._frames = self._decode_video()

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> np.ndarray:
        frame = next(self._frames)
        self.count += 1
        return frame

    def close(self) -> None:
        """Stop reading early and close the video (reading to the end closes it too)."""
        self._frames.close()

    def shortfall(self) -> Incomplete | None:
        """After the iteration: how a video fell short of its declared frames, or None.

        A video counts as cut short when it could not be decoded to the end or its container
        gave fewer packets than it declares frames; fewer frames than packets (frames the
        container's edit list hides) is not a shortfall.
        """
        source = self.source
        if source.kind != "video":
            return None
        name = source.path.name
        if self.decode_error is not None:
            reason = f"{name} cannot be decoded after frame {self.count} ({self.decode_error})"
        elif self.packets < len(source):
            reason = f"{name} ends early: its container declares {len(source)} frames (cut short?)"
        else:
            return None
        return Incomplete(frames_written=self.count, frames_expected=len(source), reason=reason)

    def _read_directory(self) -> Iterator[np.ndarray]:
        source = self.source
        for file in source.files:
            frame = read_image_rgb(file)
            if frame.shape[:2] != source.size:
                raise HodorError(
                    f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, but the first frame is "
                    f"{source.width}x{source.height}; all frames must be the same size"
                )
            yield frame

    def _decode_video(self) -> Iterator[np.ndarray]:
        container = _open_container(self.source.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fallback = stream_rotation(stream)
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        self.packets += 1
                    for frame in packet.decode():
                        yield frame_rgb(frame, fallback)
            except av.error.FFmpegError as exc:
                self.decode_error = getattr(exc, "strerror", None) or str(exc)
        finally:
            container.close()


def read_image_rgb(path: Path) -> np.ndarray:
    """An image file as ``[H,W,3]`` uint8 RGB, EXIF orientation applied (as OpenCV reads it)."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB")).copy()
    except Image.DecompressionBombError as exc:
        raise bomb_error(path, "frame", exc) from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise HodorError(f"{path}: cannot read this image ({exc.__class__.__name__})") from None


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise HodorError(f"{path}: not a readable video ({exc.__class__.__name__}: {exc})") from None
    if not container.streams.video:
        container.close()
        raise HodorError(f"{path}: has no video stream (no frames to segment)")
    return container


def frame_rgb(frame: av.VideoFrame, fallback_rotation: float) -> np.ndarray:
    """A decoded frame as ``[H,W,3]`` uint8 RGB, upright (its display matrix, else the stream's tag)."""
    rotation = getattr(frame, "rotation", None)
    if rotation is None:
        rotation = fallback_rotation
    return rotate_to_display(frame.to_ndarray(format="rgb24"), rotation)


def stream_rotation(stream: av.video.stream.VideoStream) -> float:
    """The rotation a stream's ``rotate`` tag asks for, counter-clockwise degrees (0 without one)."""
    # Older containers carry a clockwise "rotate" tag instead of a display matrix on the frames.
    try:
        return -float(stream.metadata.get("rotate", 0))
    except ValueError:
        return 0.0


def _count_video_frames(container: av.container.InputContainer) -> int:
    stream = container.streams.video[0]
    if stream.frames > 0:
        return stream.frames
    # The container does not say: count packets (demuxing only, no decoding).
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def index_stems(count: int) -> tuple[str, ...]:
    """Names of a video's frames: zero-padded indices, at least five digits."""
    width = max(MIN_INDEX_DIGITS, len(str(max(count - 1, 0))))
    return tuple(f"{i:0{width}d}" for i in range(count))


def open_frames(path: str | Path) -> FrameSource:
    """Open a video file or a directory of frames; check that it has frames and read the first."""
    path = Path(path)
    if not path.exists():
        raise HodorError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
        if not files:
            raise HodorError(f"{path}: no frames (no .jpg or .png files in this directory)")
        stems = [p.stem for p in files]
        if len(set(stems)) != len(stems):
            twice = sorted({s for s in stems if stems.count(s) > 1})
            raise HodorError(
                f"{path}: several frames share the name {twice[0]!r}; output masks would collide"
            )
        first = read_image_rgb(files[0])
        check_pixels(files[0], "frame", first.shape[1], first.shape[0])
        return FrameSource(
            path=path,
            kind="directory",
            stems=tuple(stems),
            height=first.shape[0],
            width=first.shape[1],
            fps=DIRECTORY_FPS,
            files=tuple(files),
        )

    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        try:
            first = next((f for f in container.decode(stream)), None)
        except av.error.FFmpegError as exc:
            raise HodorError(f"{path}: video cannot be decoded ({exc})") from None
        if first is None:
            raise HodorError(f"{path}: the video has no frames")
        check_pixels(path, "frame", first.width, first.height)
        first_rgb = frame_rgb(first, stream_rotation(stream))
    finally:
        container.close()
    # A fresh container for counting: not every format can seek back to the start.
    container = _open_container(path)
    try:
        count = _count_video_frames(container)
    except av.error.FFmpegError as exc:
        raise HodorError(f"{path}: video cannot be read to the end ({exc})") from None
    finally:
        container.close()
    count = max(count, 1)
    return FrameSource(
        path=path,
        kind="video",
        stems=index_stems(count),
        height=first_rgb.shape[0],
        width=first_rgb.shape[1],
        fps=Fraction(fps),
    )
