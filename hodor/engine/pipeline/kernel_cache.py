"""Compiled kernels kept between runs, so that a second run does not compile them again.

Triton compiles each fused kernel for the GPU at hand the first time it runs (seconds per
kernel) and keeps the result in its cache directory; here that directory is the user's cache
(``$XDG_CACHE_HOME/hodor-engine/triton``, by default ``~/.cache/hodor-engine/triton``) unless
``TRITON_CACHE_DIR`` already names one. Triton reads the variable when it compiles, so setting
it before the first kernel runs is enough.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

TRITON_CACHE_ENV = "TRITON_CACHE_DIR"


def user_cache_dir(environ: MutableMapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/hodor-engine`` (``~/.cache/hodor-engine`` by default)."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hodor-engine"


def use_persistent_kernel_cache(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Point Triton's kernel cache at the user's cache directory, unless it is set already;
    return the directory in use (None if it could not be made: Triton then keeps its default)."""
    if environ.get(TRITON_CACHE_ENV):
        return Path(environ[TRITON_CACHE_ENV])
    path = user_cache_dir(environ) / "triton"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    environ[TRITON_CACHE_ENV] = str(path)
    return path
