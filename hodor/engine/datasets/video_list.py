"""A list of videos and their reference masks, as CSV or JSON.

CSV: a header with ``video`` and ``masks`` columns (``name`` optional); ``masks`` holds one
or more mask arguments separated by ``;``. JSON: a list of objects (or ``{"videos": [...]}``)
with ``video``, ``masks`` (a list, or a string as in CSV) and optionally ``name``. Mask
arguments use the ``--masks`` syntax (``m.png`` binds by file stem, ``m.png@K`` to frame K).
Relative paths are taken from the list file's directory. A video's name defaults to its
file stem (or directory name) and must be unique.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hodor.engine.datasets.sequence import SequenceSpec, check_sequence_name
from hodor.engine.io.binding import parse_mask_argument
from hodor.errors import HodorError

LIST_SUFFIXES = (".csv", ".json")
MASK_SEPARATOR = ";"


def is_video_list(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in LIST_SUFFIXES


def _rows(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise HodorError(f"cannot read the video list {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"video", "masks"} - set(reader.fieldnames or ())
        if missing:
            raise HodorError(
                f"{path}: the CSV header needs the columns video and masks "
                f"(missing: {', '.join(sorted(missing))})"
            )
        return list(reader)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise HodorError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("videos")
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise HodorError(
            f'{path}: expected a list of {{"video": ..., "masks": [...]}} objects (or {{"videos": [...]}})'
        )
    return data


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def video_list_sequences(path: Path) -> list[SequenceSpec]:
    base = path.parent
    specs: list[SequenceSpec] = []
    for number, row in enumerate(_rows(path), 1):
        where = f"{path} entry {number}"
        video = row.get("video")
        masks = row.get("masks")
        if not isinstance(video, str) or not video.strip():
            raise HodorError(f"{where}: no video")
        if isinstance(masks, str):
            masks = [m.strip() for m in masks.split(MASK_SEPARATOR)]
        if not isinstance(masks, list) or not all(isinstance(m, str) for m in masks):
            raise HodorError(f"{where}: masks must be a list of mask paths (or one string, ';'-separated)")
        masks = [m for m in masks if m]
        if not masks:
            raise HodorError(f"{where}: no mask for {video}")
        video_path = _resolve(base, video.strip())
        resolved = []
        for text in masks:
            argument = parse_mask_argument(str(_resolve(base, text)))
            resolved.append(str(argument.path) + (f"@{argument.frame}" if argument.frame is not None else ""))
        name = str(row.get("name") or "").strip() or (
            video_path.name if video_path.is_dir() else video_path.stem
        )
        specs.append(
            SequenceSpec(name=check_sequence_name(name, where), frames=video_path, masks=tuple(resolved))
        )
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise HodorError(f"{path}: several videos are named {twice[0]!r}; give each a unique name")
    if not specs:
        raise HodorError(f"{path}: the list has no video")
    return specs
