"""``hodor-run A --masks ... B --masks ... [options]``: several videos segmented together, in one batch.

Each input is followed by its own ``--masks`` (the same forms as for one video); the options
after (or before) the groups are ``hodor-run``'s and apply to every video. The videos go through
one :class:`~hodor.engine.loop.batch.BatchSession`: one frame of each per step, one backbone
call over those frames and one encode and one decode call for all of them (per group of videos
whose frames pad to the same size). A video that ends leaves the batch; the others go on.

Outputs: ``OUT/<name>/masks/*.png`` and ``OUT/<name>/overlay.mp4`` per video, ``<name>`` being
the input's file stem (or directory name), which must differ between inputs. ``OUT`` (``--out``,
default ``./hodor-run.hodor-out/``) is staged and swapped in whole, as for one video. A video
cut short gets ``OUT/<name>/INCOMPLETE.json`` and the run exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hodor.command_line import EXIT_USER_ERROR, print_error
from hodor.engine.backends.base import Backend, ConfigOverrides
from hodor.engine.backends.torch_backend import TorchOptions
from hodor.engine.io import (
    INCOMPLETE_NAME,
    FrameReader,
    FrameSource,
    Incomplete,
    OverlayWriter,
    StagedDir,
    claim_output,
    foreign_entries,
    open_frames,
    write_mask,
)
from hodor.engine.io.binding import References, load_references
from hodor.engine.io.files import TEMPORARY_SUFFIX, atomic_write
from hodor.engine.io.overlay import overlay_encoder_threads
from hodor.engine.loop.batch import BatchSession, VideoClip
from hodor.engine.loop.preprocess import frame_geometry
from hodor.engine.loop.session import TinyObjectWarning
from hodor.errors import HodorError

MASKS_FLAG = "--masks"
DEFAULT_OUT = "hodor-run.hodor-out"


@dataclass(frozen=True)
class InputGroup:
    """One video of the command line: its input and its ``--masks`` arguments."""

    input: str
    masks: tuple[str, ...]


def is_batch_invocation(argv: Sequence[str]) -> bool:
    """Several ``INPUT --masks ...`` groups (``--masks`` given more than once)."""
    return sum(1 for a in argv if a == MASKS_FLAG) > 1


def split_groups(argv: Sequence[str]) -> tuple[list[InputGroup], list[str]]:
    """``A --masks a1 a2 B --masks b1 --model M`` -> the groups (A: a1 a2; B: b1) and the other
    arguments (``--model M``).

    The rule that makes it unambiguous: each input comes right before its ``--masks``, and a mask
    list runs until the next option (an argument starting with ``-``) or the next group's input.
    """
    argv = list(argv)
    starts = [i for i, a in enumerate(argv) if a == MASKS_FLAG]
    groups: list[InputGroup] = []
    rest: list[str] = []
    position = 0
    for k, start in enumerate(starts):
        if start == 0 or argv[start - 1].startswith("-"):
            raise HodorError(
                f"the {k + 1}. {MASKS_FLAG} follows no input: with several videos, write each input right "
                f"before its masks (hodor-run A.mp4 {MASKS_FLAG} a.png B/ {MASKS_FLAG} b.png [options])"
            )
        rest += argv[position : start - 1]  # options before this group
        end = start + 1
        limit = starts[k + 1] - 1 if k + 1 < len(starts) else len(argv)
        while end < limit and not argv[end].startswith("-"):
            end += 1
        masks = tuple(argv[start + 1 : end])
        if not masks:
            raise HodorError(f"{MASKS_FLAG} after {argv[start - 1]} names no mask file")
        groups.append(InputGroup(argv[start - 1], masks))
        position = end
    rest += argv[position:]
    return groups, rest


@dataclass
class _Video:
    """One input on its way through the batch: where it comes from and where its outputs go."""

    name: str
    frames: FrameSource
    references: References
    out: Path = Path()
    written: int = 0
    objects: int = 0
    overlay: OverlayWriter | None = None
    reader: FrameReader | None = None


def video_name(input_path: Path) -> str:
    """An input's name in ``OUT``: its directory name, or its file stem."""
    name = input_path.resolve().name
    return name if input_path.is_dir() else Path(name).stem


def open_inputs(groups: Sequence[InputGroup]) -> list[_Video]:
    """Every input and its references, checked before anything runs; names must differ."""
    videos, seen = [], {}
    for group in groups:
        path = Path(group.input)
        name = video_name(path)
        if name in seen:
            raise HodorError(
                f"two inputs are named {name!r} ({seen[name]} and {path}); their outputs would be "
                "OUT/<name>/: give them distinct names (rename one, or link it under another name)"
            )
        seen[name] = path
        frames = open_frames(path)
        videos.append(_Video(name, frames, load_references(list(group.masks), frames)))
    return videos


def check_output_dir(out_dir: Path, names: Sequence[str]) -> None:
    """``out_dir`` may be replaced whole: missing, empty, or holding only this run's video directories."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HodorError(f"output directory {out_dir} is an existing file; choose another --out")

    def owned(entry: str) -> bool:
        return entry in names or (entry.startswith(".") and entry.endswith(TEMPORARY_SUFFIX))

    foreign = foreign_entries(out_dir, owned)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise HodorError(
            f"output directory {out_dir} holds entries that are not this run's videos ({shown}); a run "
            "replaces its output directory whole, so choose another --out (or empty this one)"
        )


def check_batch_limits(backend: Backend, videos: Sequence[_Video]) -> None:
    """Refuse, before any frame is read, a batch the backend cannot take (an export's --max-streams)."""
    inp = backend.config.input
    groups: dict[tuple[int, int], int] = {}
    for v in videos:
        padded = frame_geometry(v.frames.height, v.frames.width, inp.min_dim, inp.max_dim).padded
        groups[padded] = groups.get(padded, 0) + 1
    for padded, count in groups.items():
        backend.check_limits(1, 1, *padded, streams=count)


def _frames_kept(frames: Iterator[np.ndarray], kept: deque[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the frames, keeping each until its overlay is written."""
    for frame in frames:
        kept.append(frame)
        yield frame


@dataclass(frozen=True)
class BatchRunResult:
    videos: int
    frames: int
    objects: int
    seconds: float
    backend: str
    out_dir: Path
    incomplete: dict[str, Incomplete]

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else float("inf")
        line = (
            f"{self.videos} videos, {self.frames} frames, {self.objects} objects, {self.seconds:.1f} s, "
            f"{fps:.2f} FPS in all, backend {self.backend}, output {self.out_dir}"
        )
        if self.incomplete:
            line += f" (incomplete: {', '.join(sorted(self.incomplete))})"
        return line


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C after ``done`` frames of all videos; raised through the staging, which discards them."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"interrupted after {done} of {total} frames")
        self.done, self.total = done, total


def _segment(batch: BatchSession, videos: Sequence[_Video], out: Path, overlay_wanted: bool) -> None:
    kept: dict[str, deque[np.ndarray]] = {}
    clips = {}
    for v in videos:
        v.out = out / v.name
        (v.out / "masks").mkdir(parents=True)
        if overlay_wanted:
            v.overlay = OverlayWriter(
                v.out / "overlay.mp4",
                v.frames.fps,
                v.frames.height,
                v.frames.width,
                v.references.palette,
                threads=overlay_encoder_threads(batch.device),
            )
        v.reader = v.frames.read()
        kept[v.name] = deque()
        clips[v.name] = VideoClip(_frames_kept(v.reader, kept[v.name]), v.references.masks)  # type: ignore[arg-type]
    by_name = {v.name: v for v in videos}
    total = sum(len(v.frames) for v in videos)
    done = 0
    try:
        with tqdm(total=total, unit="frame", desc="hodor-run", file=sys.stderr, dynamic_ncols=True) as bar:
            for step in batch.run(clips):
                for name, ids in step.items():
                    v = by_name[name]
                    frame = kept[name].popleft()
                    write_mask(v.out / "masks" / f"{v.frames.stem(v.written)}.png", ids, v.references.palette)
                    if v.overlay is not None:
                        v.overlay.write(frame, ids)
                    v.written += 1
                    v.objects = len(batch.video(name).objects)
                    done += 1
                bar.update(len(step))
        for v in videos:
            if v.overlay is not None:
                v.overlay.close()
                v.overlay = None
    except KeyboardInterrupt:
        raise BatchInterrupted(done, total) from None
    finally:
        for v in videos:
            if v.overlay is not None:
                v.overlay.abort()


def run(groups: Sequence[InputGroup], args: argparse.Namespace) -> BatchRunResult:
    """Check every input, then segment them together, writing through one staging directory."""
    from hodor.engine import cli  # the single-video command's helpers and the backend it opens

    videos = open_inputs(groups)
    model_path = cli.find_model(args.model)
    out_dir = args.out or Path.cwd() / DEFAULT_OUT
    with claim_output(out_dir, cli.PROG) as claim:
        check_output_dir(out_dir, [v.name for v in videos])
        overrides = ConfigOverrides(config_path=args.config, min_dim=args.min_dim, max_dim=args.max_dim)
        torch_options = TorchOptions(
            kernels=args.kernels,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
            backbone=args.backbone,
        )
        backend = cli.open_backend(model_path, args.backend, args.device, overrides, torch_options)
        cli.check_processing_size(backend.config, args)
        check_batch_limits(backend, videos)
        batch = BatchSession(backend, temporal_window=args.temporal_window)
        start = time.perf_counter()
        incomplete: dict[str, Incomplete] = {}
        with StagedDir(claim.target) as staged:
            _segment(batch, videos, staged.path, not args.no_overlay)
            for v in videos:
                assert v.reader is not None
                short = v.reader.shortfall()
                if short is not None:
                    incomplete[v.name] = short
                    with atomic_write(v.out / INCOMPLETE_NAME) as tmp:
                        tmp.write_text(json.dumps(asdict(short), indent=1) + "\n")
            staged.commit()
        seconds = time.perf_counter() - start
    return BatchRunResult(
        videos=len(videos),
        frames=sum(v.written for v in videos),
        objects=sum(v.objects for v in videos),
        seconds=seconds,
        backend=f"{backend.name} ({backend.device})",
        out_dir=out_dir,
        incomplete=incomplete,
    )


def main(argv: Sequence[str]) -> int:
    """``hodor-run`` with several inputs; the exit statuses of ``hodor-run``."""
    from hodor.engine import cli

    try:
        groups, rest = split_groups(argv)
    except HodorError as exc:
        print_error(cli.PROG, exc)
        return EXIT_USER_ERROR
    # The options are hodor-run's own: parsed by its parser, with the first group standing in.
    args = cli.build_parser().parse_args([groups[0].input, MASKS_FLAG, *groups[0].masks, *rest])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", TinyObjectWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.showwarning = cli._show_warning
            result = run(groups, args)
    except HodorError as exc:
        print_error(cli.PROG, exc)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        out_dir = args.out or Path.cwd() / DEFAULT_OUT
        done = f" after {exc.done} of {exc.total} frames" if isinstance(exc, BatchInterrupted) else ""
        print(f"{cli.PROG}: interrupted{done}; nothing was written to {out_dir}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print(result.summary())
    if result.incomplete:
        listed = "; ".join(f"{name}: {short.describe()}" for name, short in sorted(result.incomplete.items()))
        print(
            f"{cli.PROG}: incomplete input ({listed}); the masks of the frames before are in "
            f"{result.out_dir}, each such video marked by {INCOMPLETE_NAME}",
            file=sys.stderr,
        )
        return cli.EXIT_INCOMPLETE_INPUT
    return 0
