"""The caches a runtime backend keeps in an export directory beside the graphs (a runtime's own
optimised graphs or compiled blobs), so that start-up work is not redone at every run. The graphs
themselves are read through :func:`hodor.engine.backends.manifest.read_graph`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
