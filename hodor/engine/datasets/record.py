"""What a finished sequence's directory records, and whether ``OUT/<seq>`` is finished.

A sequence is staged as ``OUT/<seq>`` (:class:`hodor.engine.io.staging.StagedDir`) and
committed with a commit record whose details are its :class:`SequenceRecord`; a directory
counts as finished only when that record is there, names the sequence, and every file it
lists (each mask) is still there at the size it was written with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hodor.engine.io.staging import committed_record


@dataclass(frozen=True)
class SequenceRecord:
    """What a finished sequence directory holds: the mask stems written, in frame order, the
    objects segmented, and the wall time it took."""

    name: str
    stems: tuple[str, ...]
    objects: int
    seconds: float

    def details(self) -> dict[str, object]:
        """The commit record's details (JSON values)."""
        return {
            "sequence": self.name,
            "stems": list(self.stems),
            "objects": self.objects,
            "seconds": self.seconds,
        }


def finished_record(out_root: Path, name: str) -> SequenceRecord | None:
    """The record of ``out_root/<name>`` if that sequence is finished, else None (absent, never
    committed by a dataset run, or a mask since removed or changed in size)."""
    commit = committed_record(Path(out_root) / name)
    if commit is None:
        return None
    details = commit.details
    try:
        record = SequenceRecord(
            name=str(details["sequence"]),
            stems=tuple(str(s) for s in details["stems"]),
            objects=int(details["objects"]),
            seconds=float(details["seconds"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if record.name != name or not all(f"{stem}.png" in commit.files for stem in record.stems):
        return None
    return record
