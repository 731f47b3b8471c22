"""Sources and sinks: frames in (video files, frame directories), masks in and out, the overlay
video, output files and directories, and which frame each reference mask annotates.

A new input kind goes in :mod:`.frames`; a new output format beside :mod:`.masks` and
:mod:`.overlay`, written through :mod:`.files`.
"""

from hodor.engine.io.files import atomic_write, prepare_output_dir, temporary_beside
from hodor.engine.io.frames import FrameSource, index_stems, open_frames, read_image_rgb, rotate_to_display
from hodor.engine.io.masks import MaskImage, default_palette, read_mask, write_mask
from hodor.engine.io.overlay import OverlayWriter, blend_overlay

__all__ = [
    "FrameSource",
    "MaskImage",
    "OverlayWriter",
    "atomic_write",
    "blend_overlay",
    "default_palette",
    "index_stems",
    "open_frames",
    "prepare_output_dir",
    "read_image_rgb",
    "read_mask",
    "rotate_to_display",
    "temporary_beside",
    "write_mask",
]
