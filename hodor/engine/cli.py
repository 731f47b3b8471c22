"""``hodor-run``: segment the objects of a video from reference masks.

Mistakes in the input (files, masks, model, options) end with one line on stderr
and exit status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.registry import BACKEND_CHOICES, open_backend
from hodor.engine.backends.torch_backend import KERNEL_CHOICES, PRECISIONS, TorchOptions
from hodor.engine.io import FrameSource, OverlayWriter, open_frames, prepare_output_dir, write_mask
from hodor.engine.io.binding import load_references
from hodor.engine.loop.session import DEFAULT_CHUNK, DEFAULT_TEMPORAL_WINDOW, TinyObjectWarning, VideoSession
from hodor.errors import HodorError

PROG = "hodor-run"
MODEL_ENV = "HODOR_MODEL"
EXIT_USER_ERROR = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment objects through a video with HODOR, starting from reference masks.",
    )
    p.add_argument(
        "input", type=Path, help="video file (mp4, mkv, avi, webm, mov, ...) or directory of jpg/png frames"
    )
    p.add_argument(
        "--masks",
        nargs="+",
        required=True,
        metavar="M",
        help="palette PNG masks (pixel value = object id); each binds to the frame with the same file stem, "
        "to frame K with M@K, else to frame 0",
    )
    p.add_argument(
        "--model",
        type=Path,
        help=f"a .pth checkpoint (torch backend) or an export directory; default ${MODEL_ENV}, "
        "else the only *.hodor/ directory here",
    )
    p.add_argument("--config", type=Path, help="config.yaml of the checkpoint (default: the one beside it)")
    p.add_argument("--out", type=Path, help="output directory (default ./<input stem>.hodor-out/)")
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
        type=_positive,
        default=DEFAULT_TEMPORAL_WINDOW,
        help=f"past frames whose descriptors each frame attends to (default {DEFAULT_TEMPORAL_WINDOW})",
    )
    p.add_argument(
        "--min-dim",
        type=_positive,
        help="short side of the processed frames (default from the config); alone, it scales --max-dim too",
    )
    p.add_argument(
        "--max-dim", type=_positive, help="long-side limit of the processed frames (default from the config)"
    )
    p.add_argument(
        "--chunk",
        type=_positive,
        default=DEFAULT_CHUNK,
        help=f"frames per backbone batch (default {DEFAULT_CHUNK}); only these frames' features are held",
    )
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay.mp4")
    torch_options = p.add_argument_group("how the network runs (--precision also applies to exports)")
    torch_options.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        help="what computes the descriptor attentions, mask logits and pooling: the fused Triton kernels "
        "(CUDA) or plain PyTorch (default: triton on CUDA when Triton is installed, else torch)",
    )
    torch_options.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        help="compute precision (default: fp32). torch backend: fp16 needs --device cuda, bf16 a GPU or "
        "a CPU with AVX-512 BF16 or AMX. With an export: openvino takes fp32 or bf16 (bf16 backbone and "
        "encoder), onnxruntime the export's fp32 or fp16 graphs",
    )
    torch_options.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        default=None,
        help="run the per-frame encode and decode eagerly instead of replaying CUDA graphs",
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


def default_output_dir(input_path: Path) -> Path:
    name = input_path.resolve().name
    stem = name if input_path.is_dir() else Path(name).stem
    return Path.cwd() / f"{stem}.hodor-out"


def _frames_kept(frames: FrameSource, window: deque[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the frames, keeping each until the overlay has used it (at most a chunk or so)."""
    for frame in frames:
        window.append(frame)
        yield frame


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> str:
    """Do the work; return the summary line."""
    frames = open_frames(args.input)
    references = load_references(args.masks, frames)
    model_path = find_model(args.model)
    overrides = ConfigOverrides(config_path=args.config, min_dim=args.min_dim, max_dim=args.max_dim)
    torch_options = TorchOptions(kernels=args.kernels, precision=args.precision, cuda_graphs=args.cuda_graphs)
    opened = time.perf_counter()
    backend = open_backend(model_path, args.backend, args.device, overrides, torch_options)
    startup = time.perf_counter() - opened  # reading the model, creating sessions, compiling
    # Only once every input has been accepted, so that a refused run leaves no empty output behind.
    out_dir = prepare_output_dir(args.out or default_output_dir(args.input))
    session = VideoSession(backend, temporal_window=args.temporal_window, chunk=args.chunk)

    overlay = None
    if not args.no_overlay:
        overlay = OverlayWriter(
            out_dir / "overlay.mp4", frames.fps, frames.height, frames.width, references.palette
        )
    pending: deque[np.ndarray] = deque()
    start = time.perf_counter()
    count = 0
    try:
        masks = session.run(_frames_kept(frames, pending), references.masks)
        for index, ids in enumerate(tqdm(masks, total=len(frames), unit="frame", desc=PROG, file=sys.stderr)):
            frame = pending.popleft()
            write_mask(out_dir / "masks" / f"{frames.stem(index)}.png", ids, references.palette)
            if overlay is not None:
                overlay.write(frame, ids)
            count += 1
        if overlay is not None:
            overlay.close()
            overlay = None
    finally:
        if overlay is not None:
            overlay.abort()
    seconds = time.perf_counter() - start
    fps = count / seconds if seconds > 0 else float("inf")
    return (
        f"{count} frames, {len(session.objects)} objects, {seconds:.1f} s, {fps:.2f} FPS "
        f"(start-up {startup:.1f} s before that), backend {backend.name} ({backend.device}), output {out_dir}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", TinyObjectWarning)
            warnings.showwarning = _show_warning
            summary = run(args)
    except HodorError as exc:
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
