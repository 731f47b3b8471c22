"""Sources and sinks: frames in (video files, frame directories), masks in and out, the overlay
video, output files and directories, and which frame each reference mask annotates.

A new input kind goes in :mod:`.frames` (live sources: :mod:`.streams`); a new output format
beside :mod:`.masks` and :mod:`.overlay`, written through :mod:`.files` into a directory staged
by :mod:`.staging` (under the lock of :mod:`.lock`), which is swapped in whole when the run
ends well.
"""

from hodor.engine.io.files import atomic_write, temporary_beside
from hodor.engine.io.frames import (
    FrameReader,
    FrameSource,
    index_stems,
    open_frames,
    read_image_rgb,
    rotate_to_display,
)
from hodor.engine.io.lock import OutputBusyError, OutputLock
from hodor.engine.io.masks import MaskImage, default_palette, read_mask, write_mask
from hodor.engine.io.overlay import OverlayWriter, blend_overlay
from hodor.engine.io.staging import (
    COMMIT_RECORD_NAME,
    INCOMPLETE_NAME,
    CommitRecord,
    Incomplete,
    StagedDir,
    claim_output,
    claim_output_entries,
    committed_record,
    foreign_entries,
    read_commit_record,
    read_incomplete,
    remove_stale,
)
from hodor.engine.io.streams import StreamSource, is_stream, open_stream

__all__ = [
    "COMMIT_RECORD_NAME",
    "INCOMPLETE_NAME",
    "CommitRecord",
    "FrameReader",
    "FrameSource",
    "Incomplete",
    "MaskImage",
    "OutputBusyError",
    "OutputLock",
    "OverlayWriter",
    "StagedDir",
    "StreamSource",
    "atomic_write",
    "blend_overlay",
    "claim_output",
    "claim_output_entries",
    "committed_record",
    "default_palette",
    "foreign_entries",
    "index_stems",
    "is_stream",
    "open_frames",
    "open_stream",
    "read_image_rgb",
    "read_commit_record",
    "read_incomplete",
    "read_mask",
    "remove_stale",
    "rotate_to_display",
    "temporary_beside",
    "write_mask",
]
