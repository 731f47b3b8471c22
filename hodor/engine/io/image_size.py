"""The largest frame or mask that is read: Pillow's decompression-bomb limit, applied to images
and video frames alike.

Outputs are written at the input's resolution, and the runtime resamples every object's
probabilities to it, so the input size bounds memory as much as the processing size does.
The limit is read from ``PIL.Image.MAX_IMAGE_PIXELS`` at each call (twice that value, where
Pillow refuses to open an image): a Python caller who means to read larger images raises it
there, deliberately, and ``None`` lifts it.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from hodor.errors import HodorError


def max_pixels() -> int | None:
    """Most pixels a frame or mask may have (178,956,970 by default), or None for no limit."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def too_large(path: Path, what: str, pixels: int | None, size: tuple[int, int] | None = None) -> HodorError:
    """The error for a ``what`` ("frame", "mask") of ``pixels`` pixels (``size`` = width, height)."""
    shape = f"{size[0]}x{size[1]}, " if size else ""
    count = f" ({shape}{pixels:,} pixels)" if pixels is not None else ""
    return HodorError(
        f"{path}: the {what} is too large{count}; at most {max_pixels() or 0:,} pixels "
        "are read (Pillow's decompression-bomb limit): scale it down"
    )


def check_pixels(path: Path, what: str, width: int, height: int) -> None:
    """Raise :func:`too_large` if a ``width x height`` ``what`` is over :func:`max_pixels`."""
    limit = max_pixels()
    if limit is not None and width * height > limit:
        raise too_large(path, what, width * height, (width, height))


def bomb_error(path: Path, what: str, exc: Image.DecompressionBombError) -> HodorError:
    """Pillow refused to open ``path``: the same error as :func:`check_pixels` gives."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return too_large(path, what, int(found[1]) if found else None)
