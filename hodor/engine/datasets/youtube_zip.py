"""The YouTube-VOS submission: ``Annotations.zip`` holding ``Annotations/<seq>/<frame>.png``."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from hodor.engine.datasets.record import finished_record
from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

ZIP_NAME = "Annotations.zip"


def write_submission_zip(out_root: Path, sequences: Sequence[str]) -> Path:
    """Zip the finished masks of ``sequences`` into ``out_root/Annotations.zip``, atomically.

    PNGs are stored, not deflated: they are compressed already.
    """
    path = out_root / ZIP_NAME
    try:
        with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in sequences:
                record = finished_record(out_root, name)
                if record is None:
                    raise HodorError(f"cannot zip sequence {name}: its masks are not all written")
                for stem in record.stems:
                    archive.write(out_root / name / f"{stem}.png", f"Annotations/{name}/{stem}.png")
    except OSError as exc:
        raise HodorError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
