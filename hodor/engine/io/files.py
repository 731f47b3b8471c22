"""Output files and directories: every file is written under a temporary name beside its
final one and renamed, so an interrupted run leaves only whole files."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hodor.errors import HodorError

TEMPORARY_SUFFIX = ".tmp"
_counter = itertools.count()


def temporary_beside(path: Path) -> Path:
    """A hidden name in ``path``'s directory, unique to this process and call, to write ``path``
    under first (several threads may write the same file at once without sharing it)."""
    unique = f"{os.getpid()}.{threading.get_ident()}.{next(_counter)}"
    return path.with_name(f".{path.name}.{unique}{TEMPORARY_SUFFIX}")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Write ``path`` whole or not at all: the block writes the yielded temporary path beside it,
    which replaces ``path`` when the block ends normally and is removed when it raises.

    ``OSError`` from the block or the rename propagates (callers turn it into their own message).
    """
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

