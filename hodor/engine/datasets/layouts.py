"""Which dataset layout a path is, and its sequences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hodor.engine.datasets.davis import davis_sequences, expand_seqs, is_davis
from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.datasets.video_list import is_video_list, video_list_sequences
from hodor.engine.datasets.youtube_vos import is_youtube_vos, youtube_vos_sequences
from hodor.errors import HodorError

DAVIS = "davis"
YOUTUBE_VOS = "youtube-vos"
VIDEO_LIST = "list"
LAYOUTS = (DAVIS, YOUTUBE_VOS, VIDEO_LIST)
LAYOUT_CHOICES = ("auto", *LAYOUTS)

LAYOUT_HELP = (
    "DAVIS (JPEGImages/480p/<seq>, Annotations/480p/<seq>, ImageSets/2017/*.txt), "
    "YouTube-VOS (valid/JPEGImages/<seq>, valid/Annotations/<seq>, valid/meta.json) "
    "or a .csv/.json list of videos and their masks"
)


@dataclass(frozen=True)
class Dataset:
    """A dataset to segment: its layout, where it is, and its sequences in order."""

    layout: str
    root: Path
    sequences: tuple[SequenceSpec, ...]


def detect_layout(path: Path) -> str | None:
    """The layout ``path`` has, or None (a video file or a plain frame directory has none)."""
    if is_video_list(path):
        return VIDEO_LIST
    if is_davis(path):
        return DAVIS
    if is_youtube_vos(path):
        return YOUTUBE_VOS
    return None


def _inside_dataset_hint(path: Path) -> str:
    """A hint when ``path`` is a directory inside a dataset rather than its root."""
    parts = path.resolve().parts
    for marker in ("JPEGImages", "Annotations"):
        if marker in parts:
            root = Path(*parts[: parts.index(marker)])
            if detect_layout(root) or detect_layout(root.parent):
                return f"; {path} lies inside a dataset: give its root ({root})"
    return ""


def load_dataset(
    path: Path, layout: str = "auto", split: str | None = None, seqs: Sequence[str] | None = None
) -> Dataset:
    """The sequences of the dataset at ``path`` (``layout`` ``auto``: recognised by its layout)."""
    if not path.exists():
        raise HodorError(f"dataset not found: {path}")
    found = detect_layout(path)
    if layout == "auto":
        if found is None:
            raise HodorError(
                f"{path} is not a dataset: expected {LAYOUT_HELP}{_inside_dataset_hint(path)} "
                "(to segment one video, give its reference masks with --masks)"
            )
        layout = found
    if layout == DAVIS:
        specs = davis_sequences(path, split, seqs)
    elif layout == YOUTUBE_VOS:
        specs = youtube_vos_sequences(path, split, seqs)
    elif layout == VIDEO_LIST:
        if not path.is_file():
            raise HodorError(f"--layout list needs a .csv or .json file, but {path} is a directory")
        specs = video_list_sequences(path)
        wanted = expand_seqs(seqs)
        if wanted is not None:
            known = {s.name for s in specs}
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise HodorError(f"{path} has no video named {', '.join(unknown[:5])}")
            by_name = {s.name: s for s in specs}
            specs = [by_name[n] for n in wanted]
    else:
        raise HodorError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUT_CHOICES)}")
    if not specs:
        raise HodorError(f"{path}: no sequence to segment")
    return Dataset(layout=layout, root=path, sequences=tuple(specs))
