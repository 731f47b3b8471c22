"""One sequence of a dataset, segmented with an open session and written to ``OUT/<seq>/``.

The single-process runner and the Ray workers both call :func:`segment_sequence`, so that
their outputs are the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.datasets.staging import SequenceRecord, SequenceStaging
from hodor.engine.io import FrameSource, open_frames, write_mask
from hodor.engine.io.binding import References, load_references
from hodor.engine.loop.session import VideoSession
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
    """Segment ``spec`` and move its masks into ``out_root/<name>/`` once every one is written.

    Raises ``HodorError`` for a problem with the sequence's files; nothing of a failed
    sequence stays in ``out_root``.
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
    staging = SequenceStaging(out_root, spec.name)
    try:
        written: list[str] = []
        for index, ids in enumerate(session.run(frames, references.masks)):
            stem = frames.stem(index)
            if stem in wanted:
                write_mask(staging.path / f"{stem}.png", ids, references.palette)
                written.append(stem)
        record = SequenceRecord(
            name=spec.name,
            stems=tuple(written),
            objects=len(session.objects),
            seconds=time.perf_counter() - start,
        )
        staging.commit(record)
    except BaseException:
        staging.discard()
        raise
    return record
