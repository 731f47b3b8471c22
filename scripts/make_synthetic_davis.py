"""Make a small synthetic dataset of moving shapes with ground-truth masks.

    python scripts/make_synthetic_davis.py OUT [--sequences 3] [--frames 16] [--size 120x200]
                                           [--objects 2] [--seed 0] [--layout davis|youtube-vos]

``--layout davis`` (default) writes the DAVIS 2017 layout: ``JPEGImages/480p/<seq>/00000.jpg``,
``Annotations/480p/<seq>/00000.png`` for every frame (palette PNGs, pixel value = object
id) and ``ImageSets/2017/val.txt``. It is what ``hodor-run OUT`` segments and
``hodor-eval PRED OUT`` scores. ``--layout youtube-vos`` writes ``valid/JPEGImages``,
``valid/Annotations`` (each object's mask only at the frame where it first appears: every
object after the first enters a few frames into the video), ``valid/meta.json``, and the
full ground truth beside them in ``valid_gt/<seq>/`` for scoring.

Each object is an ellipse or a rectangle of its own colour that moves in a straight line,
bouncing off the borders, over a textured background; later objects pass in front of
earlier ones. Everything is drawn from ``--seed``: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hodor.engine.io.masks import default_palette

YTVOS_FRAME_STEP = 5  # YouTube-VOS names its validation frames 00000, 00005, 00010, ...


@dataclass(frozen=True)
class MovingShape:
    """One object: its shape, colour, half-sizes (px), start centre (px), velocity (px/frame), entry frame."""

    ellipse: bool
    colour: tuple[int, int, int]
    half: tuple[float, float]  # (half-height, half-width)
    start: tuple[float, float]  # (y, x)
    velocity: tuple[float, float]  # (dy, dx)
    enters: int = 0

    def centre(self, t: int, height: int, width: int) -> tuple[float, float]:
        """Centre at frame ``t``, bouncing between the borders (a triangle wave in each axis)."""
        out = []
        for start, v, half, size in zip(self.start, self.velocity, self.half, (height, width), strict=True):
            lo, hi = half, size - 1 - half
            span = max(hi - lo, 1e-6)
            p = (start - lo + v * t) % (2 * span)
            out.append(lo + (p if p <= span else 2 * span - p))
        return out[0], out[1]

    def mask(self, t: int, height: int, width: int) -> np.ndarray:
        """``[H,W]`` bool: the pixels the shape covers at frame ``t`` (none before it enters)."""
        if t < self.enters:
            return np.zeros((height, width), bool)
        cy, cx = self.centre(t, height, width)
        yy, xx = np.mgrid[:height, :width]
        dy, dx = (yy - cy) / self.half[0], (xx - cx) / self.half[1]
        if self.ellipse:
            return dy**2 + dx**2 <= 1.0
        return (np.abs(dy) <= 1.0) & (np.abs(dx) <= 1.0)


def random_shapes(
    rng: np.random.Generator, count: int, height: int, width: int, late_entries: bool, frames: int
):
    shapes = []
    for i in range(count):
        half = (rng.uniform(0.12, 0.22) * height, rng.uniform(0.10, 0.18) * width)
        start = (rng.uniform(half[0], height - half[0]), rng.uniform(half[1], width - half[1]))
        speed = rng.uniform(0.01, 0.03) * min(height, width) + 1.0
        angle = rng.uniform(0, 2 * np.pi)
        enters = 0 if i == 0 or not late_entries else int(rng.integers(2, max(3, frames // 2)))
        shapes.append(
            MovingShape(
                ellipse=bool(rng.integers(0, 2)),
                colour=tuple(int(c) for c in rng.integers(40, 256, size=3)),
                half=half,
                start=start,
                velocity=(speed * np.sin(angle), speed * np.cos(angle)),
                enters=enters,
            )
        )
    return shapes


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``[H,W,3]`` float: a colour gradient with blocky texture, fixed for the sequence."""
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    base = rng.uniform(30, 120, size=3)
    grad = rng.uniform(-60, 60, size=(2, 3))
    img = base + yy[..., None] * grad[0] + xx[..., None] * grad[1]
    blocks = rng.uniform(-25, 25, size=(height // 8 + 1, width // 8 + 1, 3))
    return img + np.kron(blocks, np.ones((8, 8, 1)))[:height, :width]


def render(shapes, bg: np.ndarray, t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t``: ``[H,W,3]`` uint8 RGB and its ``[H,W]`` uint8 id mask (later shapes in front)."""
    height, width = bg.shape[:2]
    img = bg.copy()
    ids = np.zeros((height, width), np.uint8)
    for object_id, shape in enumerate(shapes, 1):
        covered = shape.mask(t, height, width)
        img[covered] = shape.colour
        ids[covered] = object_id
    img += rng.normal(0, 4, size=img.shape)  # sensor noise, so no two frames are identical
    return np.clip(img, 0, 255).astype(np.uint8), ids


def save_mask(path: Path, ids: np.ndarray) -> None:
    image = Image.fromarray(ids, mode="P")
    image.putpalette(default_palette())
    image.save(path)


def make_dataset(
    out: Path,
    sequences: int = 3,
    frames: int = 16,
    size: tuple[int, int] = (120, 200),
    objects: int = 2,
    seed: int = 0,
    layout: str = "davis",
) -> list[str]:
    """Write the dataset under ``out``; return the sequence names."""
    height, width = size
    names = [f"synth-{i:02d}" for i in range(sequences)]
    youtube = layout == "youtube-vos"
    meta: dict = {"videos": {}}
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        shapes = random_shapes(rng, objects, height, width, late_entries=youtube, frames=frames)
        bg = background(rng, height, width)
        if youtube:
            image_dir = out / "valid" / "JPEGImages" / name
            annotation_dir = out / "valid" / "Annotations" / name
            gt_dir = out / "valid_gt" / name
            gt_dir.mkdir(parents=True, exist_ok=True)
        else:
            image_dir = out / "JPEGImages" / "480p" / name
            annotation_dir = out / "Annotations" / "480p" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        annotation_dir.mkdir(parents=True, exist_ok=True)
        object_frames: dict[str, list[str]] = {str(i): [] for i in range(1, objects + 1)}
        for t in range(frames):
            img, ids = render(shapes, bg, t, rng)
            stem = f"{t * YTVOS_FRAME_STEP:05d}" if youtube else f"{t:05d}"
            Image.fromarray(img).save(image_dir / f"{stem}.jpg", quality=95)
            if not youtube:
                save_mask(annotation_dir / f"{stem}.png", ids)
                continue
            save_mask(gt_dir / f"{stem}.png", ids)
            entering = [i for i, s in enumerate(shapes, 1) if s.enters == t]
            if entering:
                save_mask(
                    annotation_dir / f"{stem}.png", np.where(np.isin(ids, entering), ids, 0).astype(np.uint8)
                )
            for i, s in enumerate(shapes, 1):
                if t >= s.enters:
                    object_frames[str(i)].append(stem)
        meta["videos"][name] = {"objects": {i: {"frames": f} for i, f in object_frames.items()}}
    if youtube:
        (out / "valid" / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    else:
        sets = out / "ImageSets" / "2017"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / "val.txt").write_text("".join(f"{n}\n" for n in names))
    return names


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 120x200, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError("frames must be at least 32x32")
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="directory to write the dataset to")
    p.add_argument("--sequences", type=int, default=3, help="number of sequences (default 3)")
    p.add_argument("--frames", type=int, default=16, help="frames per sequence (default 16)")
    p.add_argument(
        "--size", type=_size, default=(120, 200), help="HEIGHTxWIDTH of the frames (default 120x200)"
    )
    p.add_argument("--objects", type=int, default=2, help="objects per sequence (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--layout", choices=("davis", "youtube-vos"), default="davis", help="default: davis")
    args = p.parse_args(argv)
    if args.sequences < 1 or args.frames < 3 or not 1 <= args.objects <= 254:
        p.error("need at least 1 sequence, 3 frames and 1..254 objects")
    names = make_dataset(
        args.out, args.sequences, args.frames, args.size, args.objects, args.seed, args.layout
    )
    print(f"{len(names)} sequences of {args.frames} frames ({args.layout} layout) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
