"""What the single-stream measurement drives: a system (an engine backend in a ``VideoSession``, or a
peer through its own API) stepping one video frame by frame.

The measurement loop knows only :class:`FrameStepper`; a new kind of system implements it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from fpsbench.timing import FrameTimes


class Unavailable(Exception):
    """A system that cannot run on this machine; the message says why (it is reported, not faked)."""


def import_or_unavailable(module: str, what: str) -> Any:
    """Import an optional package, or say which one is missing and what needed it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{what}: cannot import {module} ({exc})") from None


class FrameStepper(Protocol):
    """One video in one system: frames are stepped in order, the reference mask at frame 0."""

    def warm_up(self, frames: int) -> None:
        """Step ``frames`` frames untimed (at least one: frame 0 carries the reference)."""

    def run(self, frames: int, times: FrameTimes) -> float:
        """Step ``frames`` more frames, add per-frame figures to ``times``, return wall seconds."""


# Called once per stepped frame (timed or not), for the progress bar.
OnFrame = Callable[[], None]
