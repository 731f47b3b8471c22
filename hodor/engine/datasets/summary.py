"""The per-sequence summary of a dataset run: ``summary.csv`` and ``summary.json`` in the output."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hodor.engine.io.files import atomic_write

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"  # done by an earlier run (--resume)

COLUMNS = ("sequence", "status", "frames", "objects", "seconds", "fps", "attempts", "worker", "error")


@dataclass(frozen=True)
class SequenceResult:
    """How one sequence went. ``frames``: masks written; ``seconds``: wall time of the sequence
    (reading, segmenting, writing); ``attempts``: tries it took (Ray retries a dead worker's)."""

    sequence: str
    status: str
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    attempts: int = 1
    worker: str = ""
    error: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, object]:
        row = asdict(self) | {"fps": round(self.fps, 3), "seconds": round(self.seconds, 3)}
        return {c: row[c] for c in COLUMNS}


def write_summary(out_dir: Path, results: Sequence[SequenceResult], run: dict[str, object]) -> None:
    """``summary.csv`` (one row per sequence) and ``summary.json`` (the rows and ``run``), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow(result.row())
    with atomic_write(out_dir / "summary.csv") as tmp:
        tmp.write_text(text.getvalue())
    document = {"run": run, "sequences": [r.row() for r in results]}
    with atomic_write(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")
