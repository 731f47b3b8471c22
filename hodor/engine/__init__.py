"""Runtime: the per-video loop, the backends behind the three-stage seam, video and mask I/O.

``from hodor.engine import VideoSession, BatchSession, open_backend`` is the public API. Names are
resolved on first use so that importing one engine module (the manifest, a backend)
does not pull in the rest.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "VideoSession": "hodor.engine.loop.session",
    "BatchSession": "hodor.engine.loop.batch",
    "VideoClip": "hodor.engine.loop.batch",
    "TinyObjectWarning": "hodor.engine.loop.session",
    "open_backend": "hodor.engine.backends.registry",
    "ConfigOverrides": "hodor.engine.backends.base",
    "TorchOptions": "hodor.engine.backends.torch_backend",
    "Backend": "hodor.engine.backends.base",
    "open_frames": "hodor.engine.io",
    "read_mask": "hodor.engine.io",
    "write_mask": "hodor.engine.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hodor.engine' has no attribute {name!r}")
