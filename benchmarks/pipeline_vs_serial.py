#!/usr/bin/env python
"""``hodor-run``'s pipeline against the same work done on one thread, step after step.

    python benchmarks/pipeline_vs_serial.py --model ckpt.pth --size 480x854 --min-dim 128 --frames 40

One process, one loaded model, warmed up on a few frames first; the two ways alternate (serial,
pipeline, pipeline, serial, ...: each goes first as often as last) on the same generated H.264
clip, each writing masks and the overlay into a fresh directory, so that load from elsewhere on
the machine hits both alike. Reports each way's wall time per run (decode to the last file
written; the model's loading is not in it), FPS median and spread, and their ratio per pair of
runs; checks that both wrote the same mask files, byte for byte. Without ``--model`` a
checkpoint with random weights in the official format is built (speed does not depend on
weight values).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fpsbench.end_to_end import make_clip, run_end_to_end, run_serial  # noqa: E402  (beside this script)
from measurements import summarize  # noqa: E402


def _random_checkpoint(directory: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_demo", REPO_ROOT / "scripts" / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_checkpoint(directory)


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def _masks(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "masks").iterdir())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", type=Path, help="a .pth checkpoint (config.yaml beside it); default: random weights"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--size", type=_size, default=(480, 854), help="frame size HxW of the clip (default 480x854)"
    )
    p.add_argument("--min-dim", type=int, default=128, help="processing size (default 128)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="runs of each way, alternated (default 3)")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    from hodor.engine import ConfigOverrides, VideoSession, open_backend, open_frames, read_mask
    from hodor.engine.backends.torch_backend import TorchOptions

    with tempfile.TemporaryDirectory(prefix="hodor-pipeline-vs-serial-") as tmp:
        work = Path(tmp)
        model = args.model or _random_checkpoint(work / "model")
        clip = make_clip(work / "clip", *args.size, args.frames, args.objects)
        backend = open_backend(
            model, "torch", args.device, ConfigOverrides(min_dim=args.min_dim), TorchOptions(kernels="torch")
        )
        session = VideoSession(backend)
        # One-time costs (allocations, kernel selection) fall on neither way.
        warm_up = [f for _, f in zip(range(4), open_frames(clip.video), strict=False)]
        for _ in session.run(warm_up, {0: read_mask(clip.mask).ids}):
            pass
        overlay = not args.no_overlay
        ways = {"serial": run_serial, "pipeline": run_end_to_end}
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        reference: dict[str, bytes] | None = None
        for repeat in range(args.repeats):
            order = list(ways.items()) if repeat % 2 == 0 else list(ways.items())[::-1]
            for name, way in order:
                out = work / f"{name}-{repeat}"
                start = time.perf_counter()
                result = way(session, clip, out, overlay)
                seconds[name].append(time.perf_counter() - start)
                assert result.frames == args.frames, f"{name}: {result.frames} frames"
                masks = _masks(out)
                if reference is None:
                    reference = masks
                elif masks != reference:
                    raise SystemExit(f"{name} run {repeat}: its masks differ from the first run's")
                print(f"run {repeat + 1} {name}: {seconds[name][-1]:.2f} s", flush=True)

    ratios = [s / p for s, p in zip(seconds["serial"], seconds["pipeline"], strict=True)]
    fps = {name: summarize([args.frames / s for s in v]) for name, v in seconds.items()}
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": {name: asdict(summarize(v)) for name, v in seconds.items()},
        "fps": {name: asdict(stat) for name, stat in fps.items()},
        "pipeline_over_serial_fps": asdict(summarize(ratios)),
    }
    for name in ways:
        stat = fps[name]
        spread = f"{stat.min:.2f}-{stat.max:.2f}"
        print(f"{name}: {stat.median:.2f} FPS median ({spread}) over {args.repeats} runs")
    print(
        f"pipeline / serial FPS: {statistics.median(ratios):.3f} median "
        f"({min(ratios):.3f}-{max(ratios):.3f}, per pair of runs); masks identical"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
