"""One sequence of a dataset: where its frames are, which masks annotate it, which frames to write."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SequenceSpec:
    """A video to segment as part of a dataset.

    ``frames``: a video file or a directory of frames. ``masks``: reference masks in the
    ``--masks`` syntax (``path`` binds to the frame of the same stem, ``path@K`` to frame K).
    ``first_frames``: object id -> stem of the frame where that object is given; when set,
    each mask contributes only the objects first given at its frame (a dataset's later
    annotation files may repeat objects annotated earlier, which the benchmark does not give
    again). ``output_stems``: the frames whose masks are written (``None``: every frame).
    """

    name: str
    frames: Path
    masks: tuple[str, ...]
    first_frames: Mapping[int, str] | None = field(default=None, hash=False)
    output_stems: tuple[str, ...] | None = None


def check_sequence_name(name: str, where: str) -> str:
    """A sequence name is a directory name under the output directory: no separators, not hidden."""
    from hodor.errors import HodorError

    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise HodorError(
            f"{where}: sequence name {name!r} cannot be an output directory name "
            "(no '/', not empty, not starting with '.')"
        )
    return name
