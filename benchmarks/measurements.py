"""Summary statistics of repeated measurements, shared by ``fps.py`` and ``official_baseline.py``.

Imports nothing of this project: ``official_baseline.py`` runs with the public repository's own
``hodor`` package on its path.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stat:
    """Median and spread of repeated measurements (no outlier removal: the spread is the point).

    ``values`` holds every measurement, sorted; the other fields are ``None`` when there is none.
    """

    n: int
    median: float | None
    min: float | None
    max: float | None
    p25: float | None
    p75: float | None
    mean: float | None
    values: list[float] = field(default_factory=list)


def summarize(values: Sequence[float]) -> Stat:
    xs = sorted(float(v) for v in values)
    if not xs:
        return Stat(n=0, median=None, min=None, max=None, p25=None, p75=None, mean=None)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return Stat(
        n=len(xs),
        median=statistics.median(xs),
        min=xs[0],
        max=xs[-1],
        p25=q[0],
        p75=q[2],
        mean=statistics.fmean(xs),
        values=xs,
    )
