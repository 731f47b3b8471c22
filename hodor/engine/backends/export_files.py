"""Files of an export directory as the runtime backends read them: graph bytes checked against the
manifest as they are read, and the caches a runtime keeps beside the graphs (a runtime's own
optimised graphs or compiled blobs), so that start-up work is not redone at every run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from hodor.engine.backends.manifest import MANIFEST_NAME, GraphEntry
from hodor.errors import HodorError

logger = logging.getLogger(__name__)


def read_verified_graph(export_dir: Path, entry: GraphEntry) -> bytes:
    """The graph's bytes, checked against the manifest's sha256 as read (no window for a swap in between)."""
    path = export_dir / entry.file
    if not path.is_file():
        raise HodorError(
            f"{path} is missing from the export: re-export with hodor-export CKPT --out {export_dir}"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise HodorError(
            f"{path} does not match its sha256 in {MANIFEST_NAME} (the file was changed or damaged): "
            f"re-export with hodor-export CKPT --out {export_dir}"
        )
    return data


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
