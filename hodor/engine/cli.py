"""``hodor-run``: segment the objects of a video from reference masks.

Exit status: 0 done (a live source ended by its end or by Ctrl-C); 2 a mistake in the input
(files, masks, model, options, a busy or foreign output directory: one line on stderr); 3
the video ended before its declared frames or a stream broke off (the frames before are
written, the output marked ``INCOMPLETE.json``); 130 interrupted (Ctrl-C on a file: nothing
written). Anything else is a bug and shows its traceback (status 1).

The work runs through :mod:`hodor.engine.pipeline` (decoding, the device and the writers
overlapped). The outputs are written into a staging directory beside ``--out`` and swapped
in whole at the end (:mod:`hodor.engine.io.staging`): ``--out`` holds either the previous
run's outputs or this run's, never a mix and never a fragment.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from hodor.command_line import EXIT_USER_ERROR, CommandLineParser, positive_int, print_error
from hodor.config import HodorConfig
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.compiled_stage import cache_dir as compile_cache_dir
from hodor.engine.backends.registry import BACKEND_CHOICES, open_backend
from hodor.engine.backends.torch_backend import (
    BACKBONE_MODES,
    KERNEL_CHOICES,
    PRECISIONS,
    TorchBackend,
    TorchOptions,
)
from hodor.engine.io import (
    INCOMPLETE_NAME,
    FrameSource,
    Incomplete,
    StagedDir,
    StreamSource,
    claim_output,
    foreign_entries,
    is_stream,
    open_frames,
    open_stream,
    write_mask,
)
from hodor.engine.io.binding import References, load_references
from hodor.engine.io.files import TEMPORARY_SUFFIX
from hodor.engine.io.streams import stream_stem
from hodor.engine.loop.session import (
    CPU_CHUNK,
    DEFAULT_CHUNK,
    DEFAULT_TEMPORAL_WINDOW,
    TinyObjectWarning,
    VideoSession,
)
from hodor.engine.pipeline import Latency, Outputs, PipelineInterrupted, PipelineResult, run_pipeline
from hodor.engine.pipeline.kernel_cache import use_persistent_kernel_cache
from hodor.engine.pipeline.startup import StartupClock
from hodor.errors import HodorError

PROG = "hodor-run"
MODEL_ENV = "HODOR_MODEL"
EXIT_INCOMPLETE_INPUT = 3
EXIT_INTERRUPTED = 130
MASKS_DIR = "masks"
OVERLAY_NAME = "overlay.mp4"
RUN_OUTPUTS = (MASKS_DIR, OVERLAY_NAME, INCOMPLETE_NAME)
MAX_PROCESSING_SIDE = 4096
"""Longest side a frame is resized to for processing (``--max-dim``, or what ``--min-dim`` implies):
memory grows with its square, and at 4096 a frame already holds about 10 megapixels."""


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(
        prog=PROG,
        description="Segment objects through a video with HODOR, starting from reference masks.",
        epilog=f"Exit status: 0 done (a live source: at its end, or at Ctrl-C, what was processed is "
        f"written); {EXIT_USER_ERROR} a mistake in the input or options (one line on "
        f"stderr, nothing written); {EXIT_INCOMPLETE_INPUT} the video ended before its declared frames "
        f"or a stream broke off (the frames before are written, marked by {INCOMPLETE_NAME}); "
        f"{EXIT_INTERRUPTED} interrupted (Ctrl-C on a file: nothing written). --out holds the previous "
        "run's outputs or this run's, never a mix. "
        "Dataset mode: hodor-run ROOT [options] segments every sequence of a DAVIS or YouTube-VOS "
        "root or of a .csv/.json list of videos, loading the model once (hodor-run ROOT --help). "
        "Several videos at once: hodor-run A --masks M... B --masks M... [options] segments them "
        "together in one batch (each input right before its own --masks; outputs in OUT/<name>/, "
        "OUT by default ./hodor-run.hodor-out/).",
    )
    p.add_argument(
        "input",
        help="video file (mp4, mkv, avi, webm, mov, ...), directory of jpg/png frames, or a live source: "
        "- (a stream on standard input), a URL (rtsp://, http(s)://, ...) or a V4L2 device (/dev/video0)",
    )
    p.add_argument(
        "--masks",
        nargs="+",
        required=True,
        metavar="M",
        help="palette PNG masks (pixel value = object id); each binds to the frame with the same file stem "
        "(a number: the frame numbered so), to frame K with M@K, else to frame 0; a name like the frames' "
        "that matches none is an error",
    )
    p.add_argument(
        "--model",
        type=Path,
        help=f"a .pth checkpoint (torch backend) or an export directory; default ${MODEL_ENV}, "
        "else the only *.hodor/ directory here",
    )
    p.add_argument("--config", type=Path, help="config.yaml of the checkpoint (default: the one beside it)")
    p.add_argument(
        "--out",
        type=Path,
        help="output directory (default ./<input stem>.hodor-out/), replaced whole when the run ends well; "
        "a directory holding other files is refused",
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="default: auto (a checkpoint: torch; an export: tensorrt engines that run on this GPU, "
        "else onnxruntime, else openvino; with --precision bf16 an export runs on openvino)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument(
        "--temporal-window",
        type=positive_int,
        default=DEFAULT_TEMPORAL_WINDOW,
        help=f"past frames whose descriptors each frame attends to (default {DEFAULT_TEMPORAL_WINDOW})",
    )
    p.add_argument(
        "--min-dim",
        type=positive_int,
        help="short side of the processed frames (default from the config); alone, it scales --max-dim too",
    )
    p.add_argument(
        "--max-dim",
        type=positive_int,
        help="long-side limit of the processed frames (default from the config; "
        f"at most {MAX_PROCESSING_SIDE})",
    )
    p.add_argument(
        "--chunk",
        type=positive_int,
        help=f"frames per backbone batch (default {DEFAULT_CHUNK} on a GPU, {CPU_CHUNK} on the CPU); only "
        "these frames' features are held; a live source runs frame by frame",
    )
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay.mp4")
    torch_options = p.add_argument_group("how the network runs (--precision also applies to exports)")
    torch_options.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        help="what computes the descriptor attentions, mask logits, pooling, deformable convolutions "
        "and the work after each decode: the fused Triton kernels (CUDA) or plain PyTorch "
        "(default: triton on CUDA when Triton is installed, else torch)",
    )
    torch_options.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        help="compute precision (default: fp32). torch backend: fp16 needs --device cuda, bf16 a GPU or "
        "a CPU with AVX-512 BF16 or AMX. With an export: openvino takes fp32 or bf16 (all three stages; "
        "a C++ compiler, if present, builds the engine's OpenVINO operations once, for either precision), "
        "onnxruntime the "
        "export's fp32 or fp16 graphs",
    )
    torch_options.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        default=None,
        help="run the backbone and the per-frame encode and decode eagerly instead of replaying CUDA graphs",
    )
    torch_options.add_argument(
        "--backbone",
        choices=BACKBONE_MODES,
        help="how the backbone runs: graphs (CUDA graphs, one per batch size and frame size; the default "
        "on CUDA), compile (torch.compile with Inductor: the first call per shape compiles, cached under "
        "~/.cache/hodor-engine/inductor; eager with a warning if compiling fails) or eager (the default "
        "on the CPU)",
    )
    return p


def find_model(model: Path | None, cwd: Path | None = None) -> Path:
    """``--model``, else ``$HODOR_MODEL``, else the only ``*.hodor/`` directory in ``cwd``."""
    if model is not None:
        if not model.exists():
            raise HodorError(f"model not found: {model}")
        return model
    env = os.environ.get(MODEL_ENV)
    if env:
        if not Path(env).exists():
            raise HodorError(f"${MODEL_ENV} points to {env}, which does not exist")
        return Path(env)
    cwd = cwd or Path.cwd()
    exports = sorted(p for p in cwd.glob("*.hodor") if p.is_dir())
    if len(exports) == 1:
        return exports[0]
    if not exports:
        raise HodorError(
            f"no model given: pass --model PATH (a .pth checkpoint or an export directory), "
            f"set ${MODEL_ENV}, or run where exactly one *.hodor/ directory is"
        )
    raise HodorError(f"several models here ({', '.join(p.name for p in exports)}): choose one with --model")


def default_output_dir(input_text: str | Path) -> Path:
    """``./<input stem>.hodor-out``: the video's stem, the directory's name, or the stream's
    (``stdin`` for ``-``)."""
    text = str(input_text)
    if is_stream(text):
        return Path.cwd() / f"{stream_stem(text)}.hodor-out"
    input_path = Path(text)
    name = input_path.resolve().name
    stem = name if input_path.is_dir() else Path(name).stem
    return Path.cwd() / f"{stem}.hodor-out"


def open_input(text: str) -> FrameSource | StreamSource:
    """A live source (``-``, a URL, a device) opened as a stream, else a video file or frame directory."""
    return open_stream(text) if is_stream(text) else open_frames(Path(text))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)


def check_processing_size(config: HodorConfig, args: argparse.Namespace) -> None:
    """Refuse a processing size over :data:`MAX_PROCESSING_SIDE` before any memory is taken for it."""
    longest = config.input.max_dim
    if longest <= MAX_PROCESSING_SIDE:
        return
    if args.max_dim is not None:
        cause = f"--max-dim {args.max_dim}"
    elif args.min_dim is not None:
        cause = f"--min-dim {args.min_dim} (alone, it scales --max-dim to {longest})"
    else:
        cause = f"the config's MAX_DIM {longest}"
    raise HodorError(
        f"processing size too large: {cause} lets frames be resized to {longest} px on the long side, "
        f"and at most {MAX_PROCESSING_SIDE} is supported; lower it (with --max-dim {MAX_PROCESSING_SIDE} "
        "or less, or a smaller --min-dim)"
    )


def _is_run_output(name: str) -> bool:
    """What a run writes into its output directory (and, hidden, its temporary files)."""
    return name in RUN_OUTPUTS or (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX))


def check_output_dir(out_dir: Path) -> None:
    """``out_dir`` may be replaced whole: it is missing, empty, or an earlier run's outputs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise HodorError(f"output directory {out_dir} is an existing file; choose another --out")
    foreign = foreign_entries(out_dir, _is_run_output)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise HodorError(
            f"output directory {out_dir} holds files that are not hodor-run outputs ({shown}); a run "
            "replaces its output directory whole, so choose another --out (or empty this one)"
        )


@dataclass(frozen=True)
class RunResult:
    """What a finished run did: ``frames`` written for ``objects`` objects into ``out_dir``.

    ``startup``: seconds from the command's start to the first frame entering the pipeline
    (imports, inputs, device, model: ``startup_phases``); ``first_mask``: from the command's
    start to the first frame written; ``seconds``: from the first frame entering the pipeline
    to the last written. ``latency`` is reported for live sources; ``stopped``: a live
    source ended by Ctrl-C.
    """

    frames: int
    objects: int
    seconds: float
    backend: str
    out_dir: Path
    incomplete: Incomplete | None = None
    startup: float | None = None
    startup_phases: tuple[tuple[str, float], ...] = ()
    first_mask: float | None = None
    latency: Latency | None = None
    stopped: bool = False
    compile_seconds: float | None = None  # --backbone compile: time spent compiling, within ``seconds``

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        line = f"{self.frames} frames, {self.objects} objects"
        if self.startup is not None:
            line += f"; start-up {self.startup:.1f} s"
            if self.first_mask is not None:
                line += f" (first mask at {self.first_mask:.1f} s)"
        compiled = ""
        if self.compile_seconds is not None:
            compiled = f" (backbone compiled in {self.compile_seconds:.1f} s)"
        line += f"; {self.frames} frames in {self.seconds:.1f} s{compiled}, {self.fps:.2f} FPS"
        if self.latency is not None:
            line += f"; {self.latency.describe()}"
        line += f"; backend {self.backend}, output {self.out_dir}"
        if self.stopped:
            line += " (live source stopped by Ctrl-C)"
        if (short := self.incomplete) is not None:
            line += f" (incomplete: {short.count()})"
        return line


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C after ``done`` of ``total`` frames (None: a live source); raised through the staging,
    which discards them."""

    def __init__(self, done: int, total: int | None) -> None:
        of = f" of {total}" if total is not None else ""
        super().__init__(f"interrupted after {done}{of} frames")
        self.done, self.total = done, total


def _segment(
    session: VideoSession,
    frames: FrameSource | StreamSource,
    references: References,
    out: Path,
    overlay_wanted: bool,
    on_progress: Callable[[int], None] | None = None,
) -> PipelineResult:
    """Write ``out/masks/*.png`` (and ``out/overlay.mp4``) through the pipeline, with a progress
    bar unless ``on_progress`` takes the frames' progress instead."""
    (out / MASKS_DIR).mkdir()
    outputs = Outputs(
        palette=references.palette,
        masks_dir=out / MASKS_DIR,
        mask_name=frames.stem,
        overlay=out / OVERLAY_NAME if overlay_wanted else None,
        fps=frames.fps,
        write_mask=write_mask,
    )
    with ExitStack() as stack:
        if on_progress is None:
            bar = tqdm(total=frames.frame_count, unit="frame", desc=PROG, file=sys.stderr)
            on_progress = stack.enter_context(bar).update
        try:
            return run_pipeline(session, frames, references.masks, outputs, on_progress=on_progress)
        except PipelineInterrupted as exc:
            raise RunInterrupted(exc.masks_written, frames.frame_count) from None


def segment_to(
    target: Path,
    session: VideoSession,
    frames: FrameSource | StreamSource,
    references: References,
    overlay: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> PipelineResult:
    """What ``hodor-run`` does once its model is loaded: segment ``frames`` into a staging
    directory beside ``target`` and put it in place of ``target`` whole (the benchmark calls
    this too, with ``on_progress`` instead of the progress bar). The caller holds ``target``'s
    lock."""
    with StagedDir(target) as staged:
        result = _segment(session, frames, references, staged.path, overlay, on_progress)
        staged.commit(incomplete=result.shortfall)
    return result


def _initialise_device(device: str | None) -> bool:
    """Create the CUDA context now (when the run will use CUDA), so that start-up shows it apart
    from the model's loading; False when the run is on the CPU."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return False
    torch.cuda.init()
    torch.empty(0, device="cuda")
    return True


def run(args: argparse.Namespace, clock: StartupClock | None = None) -> RunResult:
    """Do the work: check every input, then write the outputs through a staging directory."""
    clock = clock or StartupClock()
    clock.mark("imports")
    frames = open_input(args.input)
    try:
        return _run_source(args, frames, clock)
    finally:
        if isinstance(frames, StreamSource):
            frames.close()  # a stream the pipeline never read


def _run_source(
    args: argparse.Namespace, frames: FrameSource | StreamSource, clock: StartupClock
) -> RunResult:
    references = load_references(args.masks, frames)
    model_path = find_model(args.model)
    out_dir = args.out or default_output_dir(args.input)
    with claim_output(out_dir, PROG) as claim:
        check_output_dir(out_dir)
        clock.mark("inputs")
        if _initialise_device(args.device):
            clock.mark("CUDA initialisation")
        use_persistent_kernel_cache()
        overrides = ConfigOverrides(config_path=args.config, min_dim=args.min_dim, max_dim=args.max_dim)
        torch_options = TorchOptions(
            kernels=args.kernels,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
            backbone=args.backbone,
        )
        backend = open_backend(model_path, args.backend, args.device, overrides, torch_options)
        check_processing_size(backend.config, args)
        compiling = isinstance(backend, TorchBackend) and backend.compiled_backbone is not None
        if compiling:
            tqdm.write(
                f"{PROG}: --backbone compile: the first frames wait while the backbone compiles "
                f"(cached in {compile_cache_dir()})",
                file=sys.stderr,
            )
        session = VideoSession(backend, temporal_window=args.temporal_window, chunk=args.chunk)
        clock.mark("model")
        result = segment_to(claim.target, session, frames, references, not args.no_overlay)
    first = result.first_frame_at
    return RunResult(
        frames=result.frames,
        objects=len(session.objects),
        seconds=result.seconds,
        backend=f"{backend.name} ({backend.device})",
        out_dir=out_dir,
        incomplete=result.shortfall,
        startup=clock.since_origin(result.started_at),
        startup_phases=tuple(clock.phases),
        first_mask=clock.since_origin(first) if first is not None else None,
        latency=result.latency if frames.live else None,
        stopped=result.interrupted,
        compile_seconds=backend.backbone_compile_seconds if compiling else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    clock = StartupClock()
    argv = sys.argv[1:] if argv is None else list(argv)
    from hodor.engine.datasets import cli as dataset_cli  # a dataset root: every sequence, one model load

    if dataset_cli.is_dataset_invocation(argv):
        return dataset_cli.main(argv)
    from hodor.engine import batch_cli  # several INPUT --masks groups: one batch

    if batch_cli.is_batch_invocation(argv):
        return batch_cli.main(argv)
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", TinyObjectWarning)
            # Frames up to Pillow's hard limit are accepted deliberately (see engine/io/image_size.py).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.showwarning = _show_warning
            result = run(args, clock)
    except HodorError as exc:
        print_error(PROG, exc)
        return EXIT_USER_ERROR
    except RunInterrupted as exc:
        out_dir = args.out or default_output_dir(args.input)
        print(f"{PROG}: {exc}; nothing was written to {out_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.summary())
    if result.incomplete is not None:
        short = result.incomplete
        print(
            f"{PROG}: incomplete input: {short.reason}; the masks of the {short.frames_written} frames "
            f"before are in {result.out_dir}, marked by {INCOMPLETE_NAME}",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
