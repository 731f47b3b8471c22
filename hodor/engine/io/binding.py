"""Which frame each ``--masks`` file annotates.

``m.png@K`` binds to frame ``K``. Otherwise a mask binds to the frame whose file stem it
shares; a number names the frame numbered so (a video's frames are numbered by index, so
``00004.png`` and ``4.png`` are frame 4). A mask whose name is no frame's binds to frame 0,
unless it is named like the frames (the same name with other digits: ``00050.png`` beside
frames ``00000`` ... ``00011``): that is a mistake, and an error, as a number past the last
frame is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hodor.engine.io import FrameSource, default_palette, read_mask
from hodor.engine.io.streams import StreamSource
from hodor.errors import HodorError

_EXPLICIT_FRAME = re.compile(r"^(?P<path>.+)@(?P<frame>\d+)$")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class MaskArgument:
    """One ``--masks`` value: a file and the frame given after ``@``, if any."""

    path: Path
    frame: int | None = None


def parse_mask_argument(text: str) -> MaskArgument:
    """``"m.png@12"`` -> (m.png, 12); ``"m.png"`` -> (m.png, None). A file whose own name ends
    in ``@digits`` is taken as it is."""
    match = _EXPLICIT_FRAME.match(text)
    if match and not Path(text).exists():
        return MaskArgument(Path(match["path"]), int(match["frame"]))
    return MaskArgument(Path(text))


def bind_frame(argument: MaskArgument, stems: Sequence[str]) -> int:
    """Frame index the mask annotates, among frames named ``stems`` (may be past the end for
    ``@K`` or a number: checked by the caller). Raises if the name looks like a frame's but
    matches none."""
    if argument.frame is not None:
        return argument.frame
    stem, stems = argument.path.stem, list(stems)
    if stem in stems:
        return stems.index(stem)
    if stem.isdigit():
        numbered = {int(s): i for i, s in enumerate(stems) if s.isdigit()}
        if int(stem) in numbered:
            return numbered[int(stem)]
        if all(s.isdigit() and int(s) == i for i, s in enumerate(stems)):
            return int(stem)  # frames numbered by index: past the end, which the caller reports
    if _named_like_a_frame(stem, stems):
        raise HodorError(
            f"{argument.path} is named like a frame, but no frame is called {stem!r} "
            f"(the frames are {stems[0]} ... {stems[-1]}): name the mask after the frame it annotates, "
            f"or write {argument.path}@K for frame K"
        )
    return 0


def _named_like_a_frame(stem: str, stems: Sequence[str]) -> bool:
    """``stem`` has digits and is some frame's name with other digits (``f050`` beside ``f000``)."""
    if not _DIGITS.search(stem):
        return False
    shape = _DIGITS.sub("#", stem)
    return any(_DIGITS.sub("#", s) == shape for s in stems)


@dataclass(frozen=True)
class References:
    """Reference masks by frame index (``[H,W]`` uint8 ids) and the palette for the outputs."""

    masks: dict[int, np.ndarray]
    palette: list[int]

    @property
    def object_ids(self) -> list[int]:
        return sorted({int(i) for m in self.masks.values() for i in np.unique(m) if i != 0})


def load_references(arguments: Sequence[str], frames: FrameSource | StreamSource) -> References:
    """Read, bind and check every mask against ``frames``; masks bound to one frame are merged.

    The output palette is that of the earliest-bound mask that has one. A live stream has no
    frame names and no declared length: its masks bind by number (``00040.png``, ``m.png@40``),
    a mask named otherwise to frame 0.
    """
    if not arguments:
        raise HodorError("no mask given: pass --masks M [M ...] (palette PNGs of the objects to track)")
    masks: dict[int, np.ndarray] = {}
    sources: dict[int, Path] = {}
    palettes: list[tuple[int, list[int]]] = []
    for text in arguments:
        argument = parse_mask_argument(text)
        mask = read_mask(argument.path)
        index = bind_frame(argument, frames.stems)
        if frames.frame_count is not None and index >= frames.frame_count:
            raise HodorError(
                f"{argument.path} is bound to frame {index}, but {frames.path} has only "
                f"{frames.frame_count} frames (0..{frames.frame_count - 1})"
            )
        h, w = mask.ids.shape
        if (h, w) != frames.size:
            raise HodorError(
                f"{argument.path} is {w}x{h}, but the frames of {frames.path} "
                f"are {frames.width}x{frames.height}"
            )
        if not mask.ids.any():
            raise HodorError(
                f"{argument.path} has no object: every pixel is 0 (object ids are the non-zero pixel values)"
            )
        if mask.palette is not None:
            palettes.append((index, mask.palette))
        if index in masks:
            masks[index] = _merge(masks[index], mask.ids, sources[index], argument.path, index)
        else:
            masks[index], sources[index] = mask.ids, argument.path
    palette = min(palettes, key=lambda p: p[0])[1] if palettes else default_palette()
    return References(masks=masks, palette=palette)


def _merge(a: np.ndarray, b: np.ndarray, path_a: Path, path_b: Path, index: int) -> np.ndarray:
    clash = (a > 0) & (b > 0) & (a != b)
    if clash.any():
        y, x = np.argwhere(clash)[0]
        raise HodorError(
            f"{path_a} and {path_b} both annotate frame {index} and disagree at pixel (x={x}, y={y}); "
            "give one mask per frame or masks that do not overlap"
        )
    return np.where(b > 0, b, a)
