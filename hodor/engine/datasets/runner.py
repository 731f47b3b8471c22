"""Running a dataset in this process: one model load, then the sequences one after another."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from hodor.engine.datasets.record import finished_record
from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.datasets.summary import FAILED, SKIPPED, SequenceResult
from hodor.engine.datasets.worker import run_one
from hodor.engine.loop.session import VideoSession

PROGRESS_DESC = "hodor-run"


def already_done(specs: Sequence[SequenceSpec], out_root: Path) -> dict[str, SequenceResult]:
    """Sequences finished by an earlier run (``--resume``), as ``skipped`` results with their record."""
    done = {}
    for spec in specs:
        record = finished_record(out_root, spec.name)
        if record is not None:
            done[spec.name] = SequenceResult(
                spec.name, SKIPPED, frames=len(record.stems), objects=record.objects, seconds=record.seconds
            )
    return done


def progress_bar(total: int) -> tqdm:
    return tqdm(total=total, unit="seq", desc=PROGRESS_DESC, file=sys.stderr, dynamic_ncols=True)


def note_result(bar: tqdm, result: SequenceResult) -> None:
    """Advance the bar; a failed sequence gets its own line above it."""
    if result.status == FAILED:
        bar.write(f"{PROGRESS_DESC}: sequence {result.sequence} failed: {result.error}", file=sys.stderr)
    bar.set_postfix_str(f"{result.sequence}: {result.frames} frames, {result.fps:.1f} FPS", refresh=False)
    bar.update()


def describe_backend(session: VideoSession) -> str:
    return f"{session.backend.name} ({session.backend.device})"


def run_local(
    specs: Sequence[SequenceSpec], session: VideoSession, out_root: Path
) -> tuple[list[SequenceResult], str]:
    """Segment ``specs`` here, one after another, with one session (the model loaded once).

    Returns the results in ``specs`` order and the backend that ran them."""
    results = []
    with progress_bar(len(specs)) as bar:
        for spec in specs:
            result = run_one(session, spec, out_root)
            note_result(bar, result)
            results.append(result)
    return results, describe_backend(session)
