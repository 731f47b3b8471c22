"""The DAVIS layout: ``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png``,
``ImageSets/2017/<split>.txt``.

Semi-supervised DAVIS gives the first frame's mask of every object and expects a mask for
every frame. Sequences come from ``--seqs``, else the split's list, else every annotated one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hodor.engine.datasets.sequence import SequenceSpec, check_sequence_name
from hodor.errors import HodorError

RESOLUTIONS = ("480p", "Full-Resolution")
DEFAULT_SPLIT = "val"
IMAGE_SETS = Path("ImageSets") / "2017"


def davis_resolution(root: Path) -> str | None:
    """The resolution directory the root has both frames and annotations for (480p first), or None."""
    for resolution in RESOLUTIONS:
        if (root / "JPEGImages" / resolution).is_dir() and (root / "Annotations" / resolution).is_dir():
            return resolution
    return None


def is_davis(root: Path) -> bool:
    return root.is_dir() and davis_resolution(root) is not None


def davis_annotations(root: Path) -> Path:
    resolution = davis_resolution(root)
    if resolution is None:
        raise HodorError(f"{root} is not a DAVIS root (no JPEGImages/480p and Annotations/480p)")
    return root / "Annotations" / resolution


def read_sequence_list(path: Path) -> list[str]:
    """Names in a text file, one a line (blank lines and ``#`` comments skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise HodorError(f"cannot read the sequence list {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def expand_seqs(seqs: Sequence[str] | None) -> list[str] | None:
    """``--seqs``: names, or a ``.txt`` file of names (one a line)."""
    if not seqs:
        return None
    names: list[str] = []
    for item in seqs:
        path = Path(item)
        if item.endswith(".txt") and path.is_file():
            names += read_sequence_list(path)
        else:
            names.append(item)
    return list(dict.fromkeys(names))


def davis_sequence_names(root: Path, split: str | None, seqs: Sequence[str] | None) -> list[str]:
    """``--seqs``, else ``ImageSets/2017/<split>.txt``, else every sequence with annotations."""
    names = expand_seqs(seqs)
    if names is not None:
        return names
    split_file = root / IMAGE_SETS / f"{split or DEFAULT_SPLIT}.txt"
    if split_file.is_file():
        return read_sequence_list(split_file)
    if split is not None:
        available = sorted(p.stem for p in (root / IMAGE_SETS).glob("*.txt"))
        raise HodorError(
            f"{split_file} not found (splits here: {', '.join(available) or 'none'}); "
            "choose --split or list the sequences with --seqs"
        )
    annotations = davis_annotations(root)
    return sorted(p.name for p in annotations.iterdir() if p.is_dir() and not p.name.startswith("."))


def davis_sequences(root: Path, split: str | None, seqs: Sequence[str] | None) -> list[SequenceSpec]:
    """One spec per sequence: its frame directory and its first annotation file."""
    resolution = davis_resolution(root)
    if resolution is None:
        raise HodorError(f"{root} is not a DAVIS root (no JPEGImages/480p and Annotations/480p)")
    specs = []
    for name in davis_sequence_names(root, split, seqs):
        check_sequence_name(name, str(root))
        frames = root / "JPEGImages" / resolution / name
        annotations = root / "Annotations" / resolution / name
        first = sorted(annotations.glob("*.png")) if annotations.is_dir() else []
        # A sequence without frames or annotation is passed on as it is: segmenting it fails
        # with the reason (here: the first frame's mask, DAVIS-named, not found), and the
        # other sequences go on.
        reference = first[0] if first else annotations / "00000.png"
        specs.append(SequenceSpec(name=name, frames=frames, masks=(str(reference),)))
    return specs
