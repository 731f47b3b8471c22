"""``make demo``: make a small synthetic clip and its first-frame mask, then run ``hodor-run`` on it.

With ``--checkpoint PATH`` (``make demo CKPT=PATH``) the given official checkpoint is used,
with the ``config.yaml`` beside it. Without, a checkpoint with random weights is built in
the official format: the masks then show the pipeline running, not segmentation quality.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
import yaml
from PIL import Image

from hodor.config import official_defaults, parse_config
from hodor.engine.io import default_palette

HEIGHT, WIDTH = 240, 320


def shapes(t: int) -> dict[int, np.ndarray]:
    """Boolean masks ``[H,W]`` of the two moving objects at frame ``t``: a disc and a square."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cx, cy = 70 + 8 * t, 120 + 30 * np.sin(t / 4)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 32**2
    sx, sy = 250 - 5 * t, 40 + 4 * t
    square = (abs(xx - sx) < 26) & (abs(yy - sy) < 26)
    return {1: disc, 2: square & ~disc}


def frame(t: int) -> np.ndarray:
    """A textured background with the two objects drawn over it, ``[H,W,3]`` uint8 RGB."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    img = np.stack(
        [90 + 40 * np.sin(xx / 17.0), 110 + 30 * np.cos(yy / 13.0), 120 + 25 * np.sin((xx + yy) / 29.0)], -1
    )
    objects = shapes(t)
    img[objects[1]] = (230, 70, 40)
    img[objects[2]] = (40, 90, 220)
    return img.clip(0, 255).astype(np.uint8)


def write_clip(path: Path, frames: int, fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_first_mask(path: Path) -> None:
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    for object_id, mask in shapes(0).items():
        ids[mask] = object_id
    img = Image.fromarray(ids, mode="P")
    img.putpalette(default_palette())
    img.save(path)


def random_checkpoint(out_dir: Path) -> Path:
    """An official-format checkpoint (``{"model": state_dict}``, official keys) with random
    weights, and the official default config beside it."""
    from hodor.model import HodorNet

    out_dir.mkdir(parents=True, exist_ok=True)
    defaults = official_defaults()
    raw = {"INPUT": defaults["INPUT"], "MODEL": defaults["MODEL"]}
    torch.manual_seed(0)
    net = HodorNet(parse_config(raw).model)
    torch.save({"model": net.state_dict()}, out_dir / "model.pth")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return out_dir / "model.pth"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="an official .pth checkpoint (config.yaml beside it)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output root (default demo-out/)")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--min-dim", type=int, default=240)
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    clip, mask = args.out / "clip.mp4", args.out / "00000.png"
    write_clip(clip, args.frames)
    write_first_mask(mask)
    print(f"demo clip: {clip} ({args.frames} frames, {WIDTH}x{HEIGHT}), first-frame mask: {mask}")

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = random_checkpoint(args.out / "random-model")
        print(
            f"no CKPT given: built {checkpoint} with RANDOM weights. The masks show the pipeline "
            "running end to end, not segmentation quality; run `make demo CKPT=path/to/model.pth` "
            "with a trained HODOR checkpoint for real results."
        )

    script = Path(sys.executable).with_name("hodor-run")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hodor.engine.cli"]
    command += [
        str(clip), "--masks", str(mask), "--model", str(checkpoint),
        "--out", str(args.out / "clip.hodor-out"), "--min-dim", str(args.min_dim),
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    code = subprocess.run(command, check=False).returncode
    if code == 0:
        venv = _shown(Path(sys.prefix))
        print(
            f"results: {args.out / 'clip.hodor-out'} (masks/*.png, overlay.mp4). hodor-run and hodor-export "
            f"are installed in {venv}: `source {venv / 'bin' / 'activate'}` puts them on your PATH "
            "(then: hodor-run --help)."
        )
    return code


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


if __name__ == "__main__":
    sys.exit(main())
