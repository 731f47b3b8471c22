"""``hodor-run ROOT``: segment every sequence of a dataset with one model load.

ROOT is a DAVIS or YouTube-VOS root, or a .csv/.json list of videos and their masks
(see :mod:`.layouts`). Masks go to ``OUT/<seq>/<frame>.png``; each sequence appears there
only once all its masks are written. ``OUT/summary.csv`` and ``OUT/summary.json`` say how
each sequence went. The whole run holds ``OUT``'s lock, as a one-video run does, so a second
run into ``OUT`` (of either mode) is refused. Exit status: 0 when every sequence is done, 1
when some failed (the others are done), 2 when the run itself is refused (one line on
stderr), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from hodor.command_line import CommandLineParser, non_negative_int, positive_int
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.registry import BACKEND_CHOICES
from hodor.engine.backends.torch_backend import KERNEL_CHOICES, PRECISIONS, TorchOptions
from hodor.engine.datasets.layouts import LAYOUT_CHOICES, LAYOUT_HELP, YOUTUBE_VOS, Dataset, load_dataset
from hodor.engine.datasets.ray_runner import DEFAULT_RETRIES, LOCAL, RayOptions, run_on_ray
from hodor.engine.datasets.runner import already_done, run_local
from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.datasets.summary import FAILED, OK, SKIPPED, SequenceResult, write_summary
from hodor.engine.datasets.video_list import LIST_SUFFIXES
from hodor.engine.datasets.worker import SessionRequest
from hodor.engine.datasets.youtube_zip import ZIP_NAME, write_submission_zip
from hodor.engine.io.staging import claim_output_entries
from hodor.engine.loop.session import CPU_CHUNK, DEFAULT_CHUNK, DEFAULT_TEMPORAL_WINDOW, TinyObjectWarning
from hodor.errors import HodorError

PROG = "hodor-run"
EXIT_SOME_FAILED = 1
EXIT_USER_ERROR = 2

DATASET_FLAGS = (
    "--layout",
    "--split",
    "--seqs",
    "--resume",
    "--ray",
    "--ray-workers",
    "--ray-cpus-per-worker",
    "--ray-retries",
)
"""Options only the dataset mode has: any of them selects it."""


def is_dataset_invocation(argv: Sequence[str]) -> bool:
    """Whether ``hodor-run argv`` asks for the dataset mode: no ``--masks`` (which a single video
    needs), and a dataset-only option or an existing directory or .csv/.json list as input."""
    if any(a == "--masks" or a.startswith("--masks=") for a in argv):
        return False
    for a in argv:
        if a.split("=", 1)[0] in DATASET_FLAGS:
            return True
    for a in argv:
        if a.startswith("-"):
            continue
        path = Path(a)
        if path.is_dir() or (path.is_file() and path.suffix.lower() in LIST_SUFFIXES):
            return True
    return False


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(
        prog=PROG,
        description="Segment every sequence of a dataset with HODOR, loading the model once. "
        "(One video: hodor-run INPUT --masks M ...)",
    )
    p.add_argument("root", type=Path, help=f"the dataset: {LAYOUT_HELP}")
    data = p.add_argument_group("dataset")
    data.add_argument(
        "--layout", choices=LAYOUT_CHOICES, default="auto", help="the dataset's layout (default: recognised)"
    )
    data.add_argument(
        "--split",
        help="DAVIS: the sequence list ImageSets/2017/SPLIT.txt (default val; without ImageSets, every "
        "annotated sequence); YouTube-VOS: the split directory (default valid)",
    )
    data.add_argument(
        "--seqs",
        nargs="+",
        metavar="S",
        help="only these sequences, in this order (names, or a .txt file of names)",
    )
    data.add_argument("--out", type=Path, help="output directory (default ./<root name>.hodor-out/)")
    data.add_argument(
        "--resume",
        action="store_true",
        help="skip sequences an earlier run finished (all masks written); redo the others",
    )
    ray = p.add_argument_group("scale-out on Ray (pip install 'hodor-engine[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        metavar="ADDRESS",
        help="spread the sequences over Ray workers: alone, a Ray instance started on this machine; "
        "with ADDRESS (auto, host:port, ray://host:port), an existing cluster (give ROOT before --ray, "
        "or write --ray=ADDRESS)",
    )
    ray.add_argument(
        "--ray-workers",
        type=positive_int,
        help="actors, each with the model loaded (default: one per GPU of the cluster, else one per "
        "--ray-cpus-per-worker CPUs)",
    )
    ray.add_argument(
        "--ray-cpus-per-worker",
        type=positive_int,
        default=1,
        help="CPUs (and torch threads) per actor (default 1)",
    )
    ray.add_argument(
        "--ray-retries",
        type=non_negative_int,
        default=DEFAULT_RETRIES,
        help=f"times a sequence whose worker died is given to a fresh worker (default {DEFAULT_RETRIES})",
    )
    model = p.add_argument_group("model (as for one video)")
    model.add_argument(
        "--model", type=Path, help="a .pth checkpoint or an export directory (as for one video)"
    )
    model.add_argument(
        "--config", type=Path, help="config.yaml of the checkpoint (default: the one beside it)"
    )
    model.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="default: auto")
    model.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    model.add_argument(
        "--temporal-window",
        type=positive_int,
        default=DEFAULT_TEMPORAL_WINDOW,
        help=f"past frames each frame attends to (default {DEFAULT_TEMPORAL_WINDOW})",
    )
    model.add_argument(
        "--min-dim", type=positive_int, help="short side of the processed frames (default from the config)"
    )
    model.add_argument(
        "--max-dim",
        type=positive_int,
        help="long-side limit of the processed frames (default from the config)",
    )
    model.add_argument(
        "--chunk",
        type=positive_int,
        help=f"frames per backbone batch (default {DEFAULT_CHUNK} on a GPU, {CPU_CHUNK} on the CPU)",
    )
    model.add_argument("--kernels", choices=KERNEL_CHOICES, help="torch backend: triton or torch kernels")
    model.add_argument("--precision", choices=tuple(PRECISIONS), help="torch backend: compute precision")
    model.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        default=None,
        help="torch backend: run each frame's encode and decode eagerly",
    )
    return p


def default_output_dir(root: Path) -> Path:
    name = root.resolve().name
    stem = Path(name).stem if root.is_file() else name
    return Path.cwd() / f"{stem}.hodor-out"


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise HodorError(f"output directory {out} is an existing file; choose another --out")


def _prepare(out: Path) -> None:
    """Make ``out`` (under the run's lock) and check that files can be written in it."""
    _check_output(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise HodorError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None


def _session_request(args: argparse.Namespace) -> SessionRequest:
    # Imported here: hodor.engine.cli dispatches to this module.
    from hodor.engine.cli import find_model

    config = args.config.resolve() if args.config else None
    return SessionRequest(
        model=find_model(args.model).resolve(),
        backend=args.backend,
        device=args.device,
        overrides=ConfigOverrides(config_path=config, min_dim=args.min_dim, max_dim=args.max_dim),
        torch_options=TorchOptions(
            kernels=args.kernels, precision=args.precision, cuda_graphs=args.cuda_graphs
        ),
        temporal_window=args.temporal_window,
        chunk=args.chunk,
    )


def _summary_line(
    results: Sequence[SequenceResult], seconds: float, backend: str, out: Path, extra: str
) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (OK, SKIPPED, FAILED)}
    frames = sum(r.frames for r in results if r.status == OK)
    fps = frames / seconds if seconds > 0 else 0.0
    return (
        f"{len(results)} sequences: {counts[OK]} done, {counts[SKIPPED]} skipped (done earlier), "
        f"{counts[FAILED]} failed; {frames} frames in {seconds:.1f} s ({fps:.2f} FPS), "
        f"backend {backend}, output {out}{extra}"
    )


def run(args: argparse.Namespace) -> tuple[str, bool]:
    """Do the work; return the summary line and whether every sequence is done."""
    dataset: Dataset = load_dataset(args.root.resolve(), args.layout, args.split, args.seqs)
    request = _session_request(args)
    out = (args.out or default_output_dir(args.root)).resolve()
    _check_output(out)
    # Claimed before the model loads, so that a second run into OUT is refused at once; the
    # claim also removes what killed runs (and dead workers) left, on entry and on leaving.
    with claim_output_entries(out, f"{PROG} {dataset.root.name}"):
        return _run_claimed(args, dataset, request, out)


def _run_claimed(
    args: argparse.Namespace, dataset: Dataset, request: SessionRequest, out: Path
) -> tuple[str, bool]:
    done = already_done(dataset.sequences, out) if args.resume and out.is_dir() else {}
    pending: list[SequenceSpec] = [s for s in dataset.sequences if s.name not in done]

    start = time.perf_counter()
    backend = "none needed"
    ran: list[SequenceResult] = []
    if pending:
        if args.ray is None:
            # The model first, so that a refused model leaves no output directory behind.
            session = request.open_session()
            _prepare(out)
            ran, backend = run_local(pending, session, out)
        else:
            _prepare(out)
            options = RayOptions(
                address=args.ray,
                workers=args.ray_workers,
                cpus_per_worker=args.ray_cpus_per_worker,
                retries=args.ray_retries,
            )
            ran, backend = run_on_ray(pending, request, out, options)
    else:
        _prepare(out)
    seconds = time.perf_counter() - start

    by_name = {r.sequence: r for r in ran} | done
    results = [by_name[s.name] for s in dataset.sequences]
    all_done = all(r.status != FAILED for r in results)
    extra = ""
    if dataset.layout == YOUTUBE_VOS:
        if all_done:
            extra = f", {ZIP_NAME} written"
            write_submission_zip(out, [s.name for s in dataset.sequences])
        else:
            extra = f", {ZIP_NAME} not written (sequences failed)"
    run_info = {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "model": str(request.model),
        "backend": backend,
        "ray": args.ray,
        "seconds": round(seconds, 3),
    }
    write_summary(out, results, run_info)
    return _summary_line(results, seconds, backend, out, extra), all_done


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from tqdm import tqdm

    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", TinyObjectWarning)
            warnings.showwarning = _show_warning
            summary, all_done = run(args)
    except HodorError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(summary)
    return 0 if all_done else EXIT_SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
