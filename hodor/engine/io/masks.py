"""Mask files: palette PNGs whose pixel values are object ids (reading and writing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hodor.engine.io.files import atomic_write
from hodor.engine.io.image_size import bomb_error
from hodor.errors import HodorError


def default_palette() -> list[int]:
    """The DAVIS / PASCAL VOC palette (768 values): object ``i``'s colour from the bits of ``i``."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


@dataclass(frozen=True)
class MaskImage:
    """A mask file: ``ids [H,W]`` uint8 object ids and its palette (768 values; ``None`` if it had none)."""

    path: Path
    ids: np.ndarray
    palette: list[int] | None


def read_mask(path: str | Path) -> MaskImage:
    """Read a palette PNG (pixel value = object id); greyscale images are accepted as ids too."""
    path = Path(path)
    if not path.is_file():
        raise HodorError(f"mask not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            palette = img.getpalette() if mode == "P" else None
            if mode not in ("P", "L"):
                raise HodorError(
                    f"{path}: a mask must be a palette PNG whose pixel values are object ids "
                    f"(this image is {mode}); save it in P mode"
                )
            ids = np.asarray(img).astype(np.uint8).copy()
    except Image.DecompressionBombError as exc:
        raise bomb_error(path, "mask", exc) from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise HodorError(f"{path}: cannot read this mask ({exc.__class__.__name__})") from None
    if palette is not None:
        palette = (list(palette) + [0] * 768)[:768]
    return MaskImage(path=path, ids=ids, palette=palette)


def write_mask(path: str | Path, ids: np.ndarray, palette: list[int]) -> None:
    """Write ``ids [H,W]`` uint8 as a palette PNG, atomically."""
    path = Path(path)
    try:
        img = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8), mode="P")
        img.putpalette(palette)
        with atomic_write(path) as tmp:
            img.save(tmp, format="PNG")
    except OSError as exc:
        raise HodorError(f"cannot write {path}: {exc.strerror or exc}") from None
