"""The caches a runtime backend keeps in an export directory beside the graphs (a runtime's own
optimised graphs or compiled blobs), so that start-up work is not redone at every run. The graphs
themselves are read through :func:`hodor.engine.backends.manifest.read_graph`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from hodor.engine.io.files import is_temporary

logger = logging.getLogger(__name__)


def writable_cache_dir(path: Path) -> Path | None:
    """``path``, created if needed, when files can be written there; else None, with a warning
    (an export on read-only storage still runs, only without its cache)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as exc:
        logger.warning("no cache at %s (%s): start-up work is redone at every run", path, exc)
        return None
    return path


def cpu_flags() -> str:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere): a cache of code tuned
    for one CPU must not be reused on another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return ""


CACHE_IDLE_DAYS = 30
"""A cache entry not used for this long is removed when a backend next opens the export: entries of
a runtime version, rewrite version or CPU no longer in use (each makes new ones, a few hundred MB)
do not pile up, while any entry still used by some machine or environment stays."""


def mark_used(path: Path) -> None:
    """Record that the cache entry ``path`` (file or directory) was used now, as its modification
    time (reading an entry does not change it); a failure only loses the record."""
    try:
        os.utime(path)
    except OSError as exc:
        logger.debug("could not mark %s as used: %s", path, exc)


def prune_idle(
    root: Path, names: re.Pattern[str], keep: Path | None = None, idle_days: float = CACHE_IDLE_DAYS
) -> list[Path]:
    """Remove the entries of the cache directory ``root`` (files, or directories with what they hold)
    whose names ``names`` matches whole (or unfinished writes of such files, left by a killed
    process) and that were not used for ``idle_days`` (by :func:`mark_used`'s record), except
    ``keep``; returns those removed. Nothing else in ``root`` is touched, whatever directory a
    caller names as the cache. An entry that cannot be removed (another process's, read-only
    storage) is left, with a debug line."""
    cutoff = time.time() - idle_days * 86400
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if keep is not None and entry == keep:
            continue
        name = entry.name
        if is_temporary(name):  # ".<name>.<pid>.<thread>.<n>.tmp"
            name = name[1:].rsplit(".", 4)[0]
        if not names.fullmatch(name):
            continue
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            logger.debug("could not remove the idle cache entry %s: %s", entry, exc)
            continue
        removed.append(entry)
    if removed:
        logger.info("removed %d cache entries of %s unused for %g days", len(removed), root, idle_days)
    return removed
