#!/usr/bin/env python
"""The runtime's work after each decode on the CPU: the post-decode, and the arg-max inside it.

    python benchmarks/cpu_tail.py                   # 480p (854x480 frames), 4 objects
    python benchmarks/cpu_tail.py --objects 16 --repeats 31

What it times, interleaved, medians (min-max) of ``--repeats`` calls after 3 warm-up calls each,
with one thread per usable core:

- ``post-decode``: :func:`hodor.engine.loop.post_decode.masks_from_logits` on one frame's logits
  (``[1, 1+Qb+I, Hp/4, Wp/4]``, random), without references: the steady state; the same with
  PyTorch's ``argmax(0)`` in place of the engine's arg-max (as it was before); and the compiled
  pass CPU sessions take (:func:`hodor.engine.loop.native_tail.native_masks_from_logits`, left
  out where it cannot be built), checked first against the torch path (the same ids, soft masks
  within 1e-6);
- the output path's arg-max over channels of the frame-sized probabilities, as PyTorch's
  ``argmax(0)`` and as :func:`hodor.engine.loop.masks.channel_argmax` (the engine's, one pass per
  channel on the CPU), checked equal first.

Each case is timed twice in one process: first with the C library's own allocation settings,
then with freed host memory kept for reuse as CPU sessions keep it
(:func:`hodor.engine.loop.host_memory.keep_freed_host_memory`), with the page faults and the
kernel time of each call (``getrusage``). Where those settings cannot be made (not glibc, or
``HODOR_KEEP_HOST_MEMORY=0``) the second round is left out and the table says so.

Speed does not depend on the values; no GPU is used.
"""

from __future__ import annotations

import argparse
import resource
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
from hodor.engine.loop.host_memory import keep_freed_host_memory  # noqa: E402
from hodor.engine.loop.masks import background_grid, channel_argmax, id_lookup, resample  # noqa: E402
from hodor.engine.loop.post_decode import masks_from_logits  # noqa: E402
from hodor.engine.loop.preprocess import frame_geometry  # noqa: E402

Call = tuple[float, int, float]


def _time(fn: Callable[[], object]) -> Call:
    """One call: wall ms, minor page faults, kernel (system) ms."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    wall = 1e3 * (time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, after.ru_minflt - before.ru_minflt, 1e3 * (after.ru_stime - before.ru_stime)


def _rounds(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[Call]]:
    """3 warm-up calls of each case, then ``repeats`` interleaved timed calls."""
    for fn in cases.values():
        for _ in range(3):
            fn()
    times: dict[str, list[Call]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(_time(fn))
    return times


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
    from hodor.engine.loop import native_tail

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
    if native_tail.enabled() and native_tail.library() is not None:

        def compiled() -> object:
            return native_tail.native_masks_from_logits(logits, nb, lookup, grid, resized, (height, width))

        want, got = post_decode(), compiled()
        differ = int((want.id_mask != got.id_mask).sum())
        error = max(float((want.fg - got.fg).abs().max()), float((want.bg - got.bg).abs().max()))
        if differ or error > 1e-6:
            print(
                f"error: the compiled post-decode differs: {differ} ids, soft masks by {error:.2e}",
                file=sys.stderr,
            )
            return 1
        cases = {"post-decode, compiled pass (native_tail)": compiled, **cases}
    else:
        print("the compiled post-decode cannot run here (see the warning): left out", file=sys.stderr)
    rounds = {"C library defaults": _rounds(cases, args.repeats)}
    kept = keep_freed_host_memory()
    if kept:
        rounds["freed memory kept"] = _rounds(cases, args.repeats)
    print(
        f"runtime tail on the CPU, {height}x{width} frames (padded {padded[0]}x{padded[1]}), "
        f"{args.objects} objects, {nb + args.objects} channels, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved calls a round; the C library's defaults first, then freed "
        "host memory kept for reuse"
        + ("" if kept else " (not here: not glibc, or HODOR_KEEP_HOST_MEMORY=0; that round left out)")
    )
    print(
        "\n| what | host memory | ms, median (min-max) | page faults a call | kernel ms a call |"
        "\n| --- | --- | --- | ---: | ---: |"
    )
    for name in cases:
        for memory, times in rounds.items():
            xs = times[name]
            wall = [x[0] for x in xs]
            print(
                f"| {name} | {memory} | {statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f}) | "
                f"{statistics.median(x[1] for x in xs):.0f} | {statistics.median(x[2] for x in xs):.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
