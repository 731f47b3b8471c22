#!/usr/bin/env python
"""How many frames a backbone call should take on the CPU: per-frame cost by batch, and whole clips.

    python benchmarks/cpu_chunk.py                                  # 480p, onnxruntime and openvino
    python benchmarks/cpu_chunk.py --min-dim 240 --chunks 1 4 16 --repeats 5

A video is segmented with the backbone batched over ``chunk`` frames (``--chunk`` of ``hodor-run``):
on a GPU a batch fills the device; on a CPU of a few cores one frame already keeps every core
busy, and a batch's activations no longer fit in the caches. Two measurements, one process, the
random-weights export of ``benchmarks/cpu_backends.py`` (``--candidates`` from its list):

1. **The backbone alone.** ``--repeats`` rounds; in each, every candidate runs one backbone call
   at each batch of ``--chunks`` on the clip's frames (16:9, short side ``--min-dim``), rounds
   interleaving candidates and batches. Milliseconds per frame, median (min-max).
2. **Whole clips.** For each candidate and chunk, a ``VideoSession`` segments a ``--frames``-frame
   clip from the reference mask of frame 0, ``--objects`` objects, window ``--window``: the whole
   ``run`` (pre-processing, the three stages, the runtime, masks as arrays), one untimed clip
   first (OpenVINO's fixed-shape compilations of the steady state are made there), then
   ``--repeats`` interleaved clips, each a new video. FPS, and the seconds to the first mask after
   the reference frame (the first chunk's backbone comes before it).

No GPU is used. Ratios are per round, against each candidate's first chunk in ``--chunks``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout, or loaded by path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from cpu_backends import (  # noqa: E402
    CANDIDATES,
    EXPORT_MAX_WINDOW,
    Clip,
    Unavailable,
    _cpu_name,
    _spread,
    _versions,
    add_clip_options,
    add_model_options,
    open_model,
)
from hodor.engine.backends.onnxruntime_backend import usable_cores  # noqa: E402
from hodor.engine.loop.preprocess import frame_geometry, normalise_frames  # noqa: E402
from hodor.engine.loop.session import VideoSession  # noqa: E402
from hodor.errors import HodorError  # noqa: E402


def backbone_ms_per_frame(
    backends: dict[str, Any], clip: Clip, config: Any, chunks: Sequence[int], repeats: int
) -> dict[str, dict[int, list[float]]]:
    """Candidate -> batch -> ms per frame of one backbone call, per round."""
    largest = max(chunks)
    raw = torch.from_numpy(np.stack([clip.frame(t) for t in range(largest)]))
    geometry = frame_geometry(*raw.shape[1:3], config.input.min_dim, config.input.max_dim)
    images = normalise_frames(raw, geometry, config.input)
    out: dict[str, dict[int, list[float]]] = {name: defaultdict(list) for name in backends}
    for backend in backends.values():  # one untimed call per batch: shape-specific preparation
        for b in chunks:
            backend.backbone(images[:b])
    for r in range(repeats):
        order = list(chunks) if r % 2 == 0 else list(reversed(chunks))
        for name, backend in backends.items():
            for b in order:
                start = time.perf_counter()
                backend.backbone(images[:b])
                out[name][b].append(1e3 * (time.perf_counter() - start) / b)
    return out


def _clip_run(session: VideoSession, clip: Clip, frames: int) -> tuple[float, float]:
    """One new video through ``session.run``: (FPS over the whole run, seconds to the first mask
    after the reference frame's)."""
    start = time.perf_counter()
    first: float | None = None
    count = 0
    for count, _ids in enumerate(session.run((clip.frame(t) for t in range(frames)), {0: clip.reference}), 1):
        if count == 2:
            first = time.perf_counter() - start
    wall = time.perf_counter() - start
    return count / wall, first if first is not None else float("nan")


def whole_clips(
    backends: dict[str, Any], clip: Clip, chunks: Sequence[int], frames: int, window: int, repeats: int
) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Candidate -> chunk -> {"fps": [...], "first_mask_s": [...]}, one value per round."""
    sessions = {
        (name, c): VideoSession(backend, temporal_window=window, chunk=c)
        for name, backend in backends.items()
        for c in chunks
    }
    for session in sessions.values():
        _clip_run(session, clip, frames)
    out: dict[str, dict[int, dict[str, list[float]]]] = {
        name: {c: {"fps": [], "first_mask_s": []} for c in chunks} for name in backends
    }
    for r in range(repeats):
        keys = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for name, c in keys:
            fps, first = _clip_run(sessions[name, c], clip, frames)
            out[name][c]["fps"].append(fps)
            out[name][c]["first_mask_s"].append(first)
    return out


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    base = s["chunks"][0]
    lines = [
        f"The backbone alone, ms per frame by batch, min_dim {s['min_dim']} ({s['repeats']} interleaved "
        f"rounds, median (min-max); ratios per round against batch {base}); machine: "
        f"{report['machine']['cpu']}, {report['machine']['usable_cores']} usable cores, load average "
        f"{report['load_average']['before']} -> {report['load_average']['after']}",
        "",
        "| candidate | "
        + " | ".join(f"batch {b}" for b in s["chunks"])
        + " | "
        + " | ".join(f"batch {b} / batch {base}" for b in s["chunks"][1:])
        + " |",
        "| --- | "
        + " | ".join("---" for _ in s["chunks"])
        + " | "
        + " | ".join("---:" for _ in s["chunks"][1:])
        + " |",
    ]
    for name, by_batch in report["backbone_ms_per_frame"].items():
        per = [by_batch[str(b)] for b in s["chunks"]]
        ratios = [
            f"{statistics.median([x / y for x, y in zip(v, per[0], strict=True)]):.2f}" for v in per[1:]
        ]
        lines.append(f"| {name} | " + " | ".join(_spread(v) for v in per) + " | " + " | ".join(ratios) + " |")
    if report.get("clips"):
        lines += [
            "",
            f"Whole clips: {s['frames']} frames, {s['objects']} objects, window {s['window']}, "
            f"`VideoSession.run` ({s['repeats']} interleaved clips after one untimed; median (min-max); "
            f"ratios per round against chunk {base})",
            "",
            "| candidate | chunk | FPS | FPS x chunk " + str(base) + " | first mask s |",
            "| --- | ---: | --- | ---: | --- |",
        ]
        for name, by_chunk in report["clips"].items():
            for c in s["chunks"]:
                got = by_chunk[str(c)]
                ratio = statistics.median(
                    [x / y for x, y in zip(got["fps"], by_chunk[str(base)]["fps"], strict=True)]
                )
                lines.append(
                    f"| {name} | {c} | {_spread(got['fps'], 3)} | {ratio:.2f} | "
                    f"{_spread(got['first_mask_s'], 2)} |"
                )
    for name, why in report["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--candidates",
        nargs="+",
        choices=sorted(CANDIDATES),
        default=["onnxruntime", "openvino"],
        metavar="NAME",
        help="backends (benchmarks/cpu_backends.py's names; default: %(default)s)",
    )
    p.add_argument("--chunks", nargs="+", type=int, default=[1, 4, 16], help="batches (default: %(default)s)")
    add_clip_options(p)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument(
        "--frames", type=int, default=20, help="frames per whole clip (default 20); 0: the backbone alone"
    )
    add_model_options(p)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    if any(c < 1 for c in args.chunks):
        p.error("--chunks must be >= 1")
    if args.window > EXPORT_MAX_WINDOW:
        p.error(f"--window at most {EXPORT_MAX_WINDOW}")
    if (args.checkpoint is None) != (args.export is None):
        p.error("--checkpoint and --export go together")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    load_before = [round(x, 2) for x in os.getloadavg()]
    model = open_model(args, log)
    clip = Clip(args.min_dim, args.objects)
    backends: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in args.candidates:
        try:
            backends[name] = CANDIDATES[name].open(model, None)
        except (HodorError, Unavailable) as exc:
            skipped[name] = " ".join(str(exc).split())
            log(f"{name}: skipped ({skipped[name]})")
    log(f"the backbone alone: {args.repeats} rounds at batches {args.chunks}")
    per_frame = backbone_ms_per_frame(backends, clip, model.config, args.chunks, args.repeats)
    clips: dict[str, Any] = {}
    if args.frames > 0:
        log(f"whole clips: {args.repeats} rounds of {args.frames} frames at chunks {args.chunks}")
        clips = whole_clips(backends, clip, args.chunks, args.frames, args.window, args.repeats)
    report = {
        "settings": {
            "min_dim": args.min_dim,
            "objects": args.objects,
            "window": args.window,
            "repeats": args.repeats,
            "frames": args.frames,
            "chunks": list(args.chunks),
        },
        "machine": {"cpu": _cpu_name(), "usable_cores": usable_cores(), "versions": _versions()},
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "backbone_ms_per_frame": {n: {str(b): v for b, v in d.items()} for n, d in per_frame.items()},
        "clips": {n: {str(c): v for c, v in d.items()} for n, d in clips.items()},
        "skipped": skipped,
    }
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
