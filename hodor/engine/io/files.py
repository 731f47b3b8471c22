"""Output files: every file is written under a temporary name beside its final one and renamed,
so that whoever reads the directory (a commit, a live viewer) only ever sees whole files.
Whole directories are staged and swapped in by :mod:`hodor.engine.io.staging`."""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
_counter = itertools.count()
_TEMPORARY = re.compile(r"^\..+\.\d+\.\d+\.\d+" + re.escape(TEMPORARY_SUFFIX) + "$")


def temporary_beside(path: Path) -> Path:
    """A hidden name in ``path``'s directory, unique to this process and call, to write ``path``
    under first (several threads may write the same file at once without sharing it)."""
    unique = f"{os.getpid()}.{threading.get_ident()}.{next(_counter)}"
    return path.with_name(f".{path.name}.{unique}{TEMPORARY_SUFFIX}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one :func:`temporary_beside` makes (a file a writer has not finished)."""
    return _TEMPORARY.match(name) is not None


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
