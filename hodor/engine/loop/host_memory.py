"""Freed host memory kept for reuse when the loop runs on the CPU.

Every CPU frame allocates and frees the same large tensors: the decoder's logits resampled to
the padded frame (14 channels of 480x832 floats, 22 MB at 480p with 4 objects), their softmax,
the frame-sized probabilities. With its default settings the C library (glibc) may hand such
blocks back to the kernel when they are freed (``munmap``, or trimming the heap's top), and the
next frame then faults every page in again, zero-filled by the kernel. The post-decode alone at
480p: 44 ms a call with 15,000 page faults and 31 ms in the kernel, against 23 ms and none with
its memory reused (``benchmarks/cpu_tail.py``, benchmarks/RESULTS.md).

:func:`keep_freed_host_memory` tells glibc (``mallopt``) to serve blocks of up to
:data:`MMAP_THRESHOLD` from its heap and to keep up to :data:`TRIM_THRESHOLD` of freed memory
at the heap's top for reuse instead of returning it. The process keeps its peak heap; in
``benchmarks/fps.py`` at 480p the peak resident memory was the same with and without (4166 and
4153 MiB with three backends loaded). Sessions on the CPU call it
(:class:`~hodor.engine.loop.video.VideoState`). It changes nothing where the C library is not
glibc, where the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``,
or with ``HODOR_KEEP_HOST_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks up to this size come from the heap (glibc's largest allowed value, 32 MiB on 64 bits)."""

TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Freed memory at the heap's top kept for reuse, up to this much (1 GiB)."""

OPT_OUT = "HODOR_KEEP_HOST_MEMORY"
"""Set to ``0`` to leave the C library's allocation settings as they are."""

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""glibc's own environment settings; where the user set one, theirs stand."""

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None  # None: not tried yet


def keep_freed_host_memory() -> bool:
    """Keep freed host memory for reuse (see the module); True where the settings are in effect.

    Idempotent and cheap after the first call; never raises.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(OPT_OUT, "1").strip() == "0" or any(name in os.environ for name in USER_SETTINGS):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt differ or do nothing  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. The trim threshold first: it only widens what is kept.
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return trimmed and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
