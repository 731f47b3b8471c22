#!/usr/bin/env python
"""The runtime's work after each decode on the CPU: the post-decode, and the arg-max inside it.

    python benchmarks/cpu_tail.py                   # 480p (854x480 frames), 4 objects
    python benchmarks/cpu_tail.py --objects 16 --repeats 31

What it times, interleaved, medians (min-max) of ``--repeats`` calls after 3 warm-up calls each,
with one thread per usable core:

- ``post-decode``: :func:`hodor.engine.loop.post_decode.masks_from_logits` on one frame's logits
  (``[1, 1+Qb+I, Hp/4, Wp/4]``, random), without references: the steady state; and the same with
  PyTorch's ``argmax(0)`` in place of the engine's arg-max (as it was before);
- the output path's arg-max over channels of the frame-sized probabilities, as PyTorch's
  ``argmax(0)`` and as :func:`hodor.engine.loop.masks.channel_argmax` (the engine's, one pass per
  channel on the CPU), checked equal first.

Speed does not depend on the values; no GPU is used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hodor.config import parse_config, with_dims  # noqa: E402
from hodor.engine.backends.onnxruntime_backend import usable_cores  # noqa: E402
from hodor.engine.loop.masks import background_grid, channel_argmax, id_lookup, resample  # noqa: E402
from hodor.engine.loop.post_decode import masks_from_logits  # noqa: E402
from hodor.engine.loop.preprocess import frame_geometry  # noqa: E402


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-dim", type=int, default=480)
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.objects < 1:
        p.error("--repeats and --objects must be >= 1")
    torch.set_num_threads(usable_cores())
    cfg = with_dims(parse_config({}), args.min_dim, None)
    height, width = args.min_dim, 2 * round(args.min_dim * 8 / 9)
    geometry = frame_geometry(height, width, cfg.input.min_dim, cfg.input.max_dim)
    padded = (geometry.padded_height, geometry.padded_width)
    qb = cfg.model.num_bg_descriptors
    nb = 1 + qb
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, nb + args.objects, padded[0] // 4, padded[1] // 4, generator=g)
    lookup = id_lookup(nb, list(range(1, args.objects + 1)), "cpu")
    rows = int(round(qb**0.5))
    grid = background_grid(rows, qb // rows, padded[0] // 8, padded[1] // 8)
    resized = (geometry.resized_height, geometry.resized_width)
    probs = resample(
        torch.softmax(resample(logits, padded), 1)[:, :, : resized[0], : resized[1]], (height, width)
    )[0]
    if not torch.equal(probs.argmax(0), channel_argmax(probs)):
        print("error: channel_argmax differs from argmax", file=sys.stderr)
        return 1

    from unittest import mock

    import hodor.engine.loop.masks as masks

    def post_decode() -> object:
        return masks_from_logits(logits, nb, lookup, grid, resized, (height, width))

    def post_decode_before() -> object:
        with mock.patch.object(masks, "channel_argmax", lambda maps: maps.argmax(0)):
            return post_decode()

    cases: dict[str, Callable[[], object]] = {
        "post-decode (masks_from_logits)": post_decode,
        "post-decode with torch argmax(0) (before)": post_decode_before,
        "arg-max: torch argmax(0)": lambda: probs.argmax(0),
        "arg-max: channel_argmax": lambda: channel_argmax(probs),
    }
    for fn in cases.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(_time(fn))
    print(
        f"runtime tail on the CPU, {height}x{width} frames (padded {padded[0]}x{padded[1]}), "
        f"{args.objects} objects, {nb + args.objects} channels, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved calls"
    )
    print("\n| what | ms, median (min-max) |\n| --- | --- |")
    for name, xs in times.items():
        print(f"| {name} | {statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
