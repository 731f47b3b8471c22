"""Output files and directories: every file is written under a temporary name beside its
final one and renamed, so an interrupted run leaves only whole files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hodor.errors import HodorError


def temporary_beside(path: Path) -> Path:
    """A hidden name in ``path``'s directory, unique to this process, to write ``path`` under first."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``path`` (and ``path/masks``) and check that files can be written there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HodorError(f"output directory {path} is an existing file; choose another --out")
    try:
        (path / "masks").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path / "masks"):
            pass
    except OSError as exc:
        raise HodorError(f"cannot write to output directory {path}: {exc.strerror or exc}") from None
    return path

