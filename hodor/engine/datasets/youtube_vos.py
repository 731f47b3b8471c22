"""The YouTube-VOS layout: ``<split>/JPEGImages/<seq>/*.jpg``, ``<split>/Annotations/<seq>/*.png``,
``<split>/meta.json``.

``meta.json`` lists, for each video, its objects and the frames each object is to be
segmented in, from the frame where it first appears. An object's mask is given only at that
frame, in the annotation file of that frame; objects may first appear after the first frame.
The benchmark expects a mask for exactly the frames listed for some object of the video
(the union over its objects), and takes the results as a zip of ``Annotations/<seq>/*.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hodor.engine.datasets.davis import expand_seqs
from hodor.engine.datasets.sequence import SequenceSpec, check_sequence_name
from hodor.errors import HodorError

DEFAULT_SPLIT = "valid"
META = "meta.json"


def youtube_vos_split_dir(root: Path, split: str | None) -> Path | None:
    """The directory with ``JPEGImages``, ``Annotations`` and ``meta.json``: ``root/<split>``, or
    ``root`` itself when it is one; None if neither."""
    for candidate in (root / (split or DEFAULT_SPLIT), root):
        if (candidate / "JPEGImages").is_dir() and (candidate / META).is_file():
            return candidate
    return None


def is_youtube_vos(root: Path) -> bool:
    return root.is_dir() and youtube_vos_split_dir(root, None) is not None


def _object_frames(meta_path: Path) -> dict[str, dict[int, list[str]]]:
    """``meta.json`` -> video -> object id -> its frame stems, in order."""
    try:
        meta = json.loads(meta_path.read_text())
        videos = meta["videos"]
        out: dict[str, dict[int, list[str]]] = {}
        for video, entry in videos.items():
            objects = {int(oid): [str(f) for f in obj["frames"]] for oid, obj in entry["objects"].items()}
            out[str(video)] = objects
    except OSError as exc:
        raise HodorError(f"cannot read {meta_path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HodorError(
            f"{meta_path} is not a YouTube-VOS meta file "
            '({"videos": {seq: {"objects": {id: {"frames": [...]}}}}}): '
            f"{exc.__class__.__name__} {exc}"
        ) from None
    return out


def youtube_vos_sequences(root: Path, split: str | None, seqs: Sequence[str] | None) -> list[SequenceSpec]:
    split_dir = youtube_vos_split_dir(root, split)
    if split_dir is None:
        raise HodorError(
            f"{root} is not a YouTube-VOS root (no {split or DEFAULT_SPLIT}/JPEGImages and "
            f"{split or DEFAULT_SPLIT}/{META})"
        )
    videos = _object_frames(split_dir / META)
    names = expand_seqs(seqs) or sorted(videos)
    unknown = [n for n in names if n not in videos]
    if unknown:
        raise HodorError(f"{split_dir / META} does not list {', '.join(unknown[:5])}")
    specs = []
    for name in names:
        check_sequence_name(name, str(split_dir / META))
        objects = {oid: frames for oid, frames in videos[name].items() if frames}
        first_frames = {oid: frames[0] for oid, frames in objects.items()}
        annotation_dir = split_dir / "Annotations" / name
        masks = tuple(str(annotation_dir / f"{stem}.png") for stem in sorted(set(first_frames.values())))
        output = tuple(sorted({f for frames in objects.values() for f in frames}))
        specs.append(
            SequenceSpec(
                name=name,
                frames=split_dir / "JPEGImages" / name,
                masks=masks,
                first_frames=first_frames,
                output_stems=output,
            )
        )
    return specs
