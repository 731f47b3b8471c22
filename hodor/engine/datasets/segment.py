"""One sequence of a dataset, segmented with an open session and written to ``OUT/<seq>/``.

The single-process runner and the Ray workers both call :func:`segment_sequence`, so that
their outputs are the same. The masks go into a :class:`~hodor.engine.io.staging.StagedDir`
of ``OUT/<seq>``, written and locked by the process segmenting the sequence (a Ray worker
writes its own), and committed with the sequence's record once the last mask is written.
The run's lock on ``OUT`` is the caller's (the driver's), never a worker's. A sequence goes
through the same pipeline as one video given to ``hodor-run`` (:mod:`hodor.engine.pipeline`),
without the overlay.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hodor.engine.datasets.record import SequenceRecord
from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.io import FrameSource, StagedDir, open_frames, write_mask
from hodor.engine.io.binding import References, load_references
from hodor.engine.loop.session import VideoSession
from hodor.engine.pipeline import Outputs, run_pipeline
from hodor.errors import HodorError


def first_appearances(references: References, spec: SequenceSpec, frames: FrameSource) -> References:
    """Keep in each reference mask only the objects that ``spec.first_frames`` gives at its frame."""
    assert spec.first_frames is not None
    kept: dict[int, np.ndarray] = {}
    for index, ids in references.masks.items():
        stem = frames.stem(index)
        new = [oid for oid, first in spec.first_frames.items() if first == stem]
        mask = np.where(np.isin(ids, new), ids, 0).astype(np.uint8)
        if mask.any():
            kept[index] = mask
    missing = sorted(
        oid
        for oid, stem in spec.first_frames.items()
        if stem in frames.stems and not any((m == oid).any() for m in kept.values())
    )
    if missing:
        raise HodorError(
            f"sequence {spec.name}: object(s) {missing} are not in the annotation of the frame where "
            "the dataset says they first appear"
        )
    if not kept:
        raise HodorError(f"sequence {spec.name}: no object in its reference masks")
    return References(masks=kept, palette=references.palette)


def segment_sequence(session: VideoSession, spec: SequenceSpec, out_root: Path) -> SequenceRecord:
    """Segment ``spec`` and put its masks in place as ``out_root/<name>/`` (replacing an earlier
    one whole) once every one is written.

    Raises ``HodorError`` for a problem with the sequence's files; nothing of a failed or
    interrupted sequence stays in ``out_root``. A process killed outright leaves its staging
    directory, unlocked by its death, for the run's clean-up to remove.
    """
    start = time.perf_counter()
    frames = open_frames(spec.frames)
    references = load_references(list(spec.masks), frames)
    if spec.first_frames is not None:
        references = first_appearances(references, spec, frames)
    wanted = set(frames.stems) if spec.output_stems is None else set(spec.output_stems)
    absent = sorted(wanted - set(frames.stems))
    if absent:
        raise HodorError(
            f"sequence {spec.name}: masks are expected for frame(s) {', '.join(absent[:5])}, "
            f"which {spec.frames} does not have"
        )
    def mask_name(index: int) -> str | None:
        stem = frames.stem(index)
        return stem if stem in wanted else None

    with StagedDir(out_root / spec.name) as staged:
        outputs = Outputs(references.palette, staged.path, mask_name, write_mask=write_mask)
        result = run_pipeline(session, frames, references.masks, outputs)
        written = [stem for index in range(result.frames) if (stem := mask_name(index)) is not None]
        record = SequenceRecord(
            name=spec.name,
            stems=tuple(written),
            objects=len(session.objects),
            seconds=time.perf_counter() - start,
        )
        staged.commit(record=record.details())
    return record
