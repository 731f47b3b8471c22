"""Where a run's start-up goes: from the process's start to the first frame entering the pipeline,
in phases (imports, inputs, device initialisation, model), then to the first mask written."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

_MAX_PLAUSIBLE_AGE_S = 24 * 3600.0


def process_started_at() -> float | None:
    """The ``time.perf_counter()`` value at which this process started (Linux), or None.

    From the start time in ``/proc/self/stat`` (clock ticks since boot, so to 10 ms), so that
    the interpreter's own start and every import are counted.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, "starttime"
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    if not 0.0 <= age < _MAX_PLAUSIBLE_AGE_S:
        return None
    return time.perf_counter() - age


@dataclass
class StartupClock:
    """Phases of the start-up, each from the end of the previous one; ``origin`` is the process's
    start where it is known, else the moment the clock was made."""

    origin: float = field(default_factory=lambda: process_started_at() or time.perf_counter())
    phases: list[tuple[str, float]] = field(default_factory=list)
    _last: float | None = None

    def mark(self, phase: str) -> float:
        """End ``phase`` now; return its seconds."""
        now = time.perf_counter()
        seconds = now - (self._last if self._last is not None else self.origin)
        self.phases.append((phase, seconds))
        self._last = now
        return seconds

    def since_origin(self, at: float) -> float:
        """Seconds from the process's start to ``at`` (a ``time.perf_counter()`` value)."""
        return at - self.origin

    def describe(self) -> str:
        """``"imports 1.2 s, inputs 0.1 s, model 0.8 s"``."""
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases)
