"""Per-sequence output: a sequence is written into a staging directory and renamed into place.

``OUT/<seq>/`` therefore exists only once every mask of the sequence is written, with a
record of what was written (``.hodor-sequence.json``, the last file written before the
rename). A run that stops in the middle leaves its partial work under ``OUT/.staging/``,
which the next run clears; one run at a time may write an output directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

STAGING_DIR = ".staging"
RECORD = ".hodor-sequence.json"


@dataclass(frozen=True)
class SequenceRecord:
    """What a finished sequence directory holds: the mask stems written and how the run went."""

    name: str
    stems: tuple[str, ...]
    objects: int
    seconds: float


class SequenceStaging:
    """A fresh staging directory for sequence ``name`` of ``out_root``.

    Its name, ``<seq>.<host>.<pid>.<random>``, is unique to the writer, so that a retried
    sequence never shares a directory with the attempt that died.
    """

    def __init__(self, out_root: Path, name: str) -> None:
        self.out_root = Path(out_root)
        self.name = name
        owner = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.path = self.out_root / STAGING_DIR / f"{name}.{owner}"
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise HodorError(f"cannot write to {self.path.parent}: {exc.strerror or exc}") from None

    def commit(self, record: SequenceRecord) -> Path:
        """Write the record, then move the directory to ``out_root/<name>`` (replacing an older one)."""
        with atomic_write(self.path / RECORD) as tmp:
            tmp.write_text(json.dumps(asdict(record), indent=1))
        final = self.out_root / self.name
        if final.exists():
            # A directory cannot be renamed onto a non-empty one: move the old one aside first.
            old = self.path.with_name(self.path.name + ".replaced")
            os.rename(final, old)
            os.rename(self.path, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, final)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_record(sequence_dir: Path) -> SequenceRecord | None:
    """The record of a finished sequence directory, or None if it has none (or an unreadable one)."""
    try:
        data = json.loads((sequence_dir / RECORD).read_text())
        return SequenceRecord(
            name=str(data["name"]),
            stems=tuple(str(s) for s in data["stems"]),
            objects=int(data["objects"]),
            seconds=float(data["seconds"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_record(out_root: Path, name: str) -> SequenceRecord | None:
    """The record of ``out_root/<name>`` if that sequence is done: recorded and every mask present."""
    directory = out_root / name
    record = read_record(directory)
    if record is None or record.name != name:
        return None
    if not all((directory / f"{stem}.png").is_file() for stem in record.stems):
        return None
    return record


def clear_staging(out_root: Path) -> None:
    """Remove what interrupted attempts left in ``out_root/.staging``."""
    shutil.rmtree(Path(out_root) / STAGING_DIR, ignore_errors=True)
