#!/usr/bin/env python
"""Frames per second and per-stage latency of every backend, side by side, in one process.

    python benchmarks/fps.py                  # the full grid: min_dim 480, 720; 1, 2, 4, 8 objects
    python benchmarks/fps.py --quick          # small; about a minute on 2 CPU cores
    python benchmarks/fps.py --backends torch onnxruntime --min-dims 480 --objects 1 2 4 8 --out bench-out
    python benchmarks/fps.py --peers          # also Cutie and SAM 2.1 through their own APIs
    python benchmarks/fps.py --official ~/src/HODOR   # also the public repository's InferenceModel (CUDA)

It says up front what it will run and roughly how long, and shows a progress bar over the frames.
What is measured, per backend, processing size (``min_dim``) and object count:

* the single-stream steady state: one ``VideoSession`` is warmed up (by default for ``window + 3``
  frames, so the descriptor ring is full, every code path has run and a backend that compiles for
  the steady state's shapes, OpenVINO, has done so), then ``--repeats`` runs of
  ``--frames`` consecutive frames are timed. Runs of the different backends (and peers) are
  interleaved, so a burst of load from elsewhere on the machine hits all of them alike and the
  ratios stay fair. FPS is reported per run (median, spread); per-stage latency per frame:
  ``backbone``, ``encode``, ``decode`` (timed at the backend seam) and ``runtime`` (everything else
  in ``step``);
* throughput over ``--streams`` concurrent videos, each in its own session;
* batches of sessions: for each count of ``--batch-streams``, that many videos in one
  ``BatchSession`` (one stage call per step for all of them) against the same videos in separate
  sessions, runs interleaved: aggregate FPS, per-video latency, peak memory, and their ratio;
* peak host memory (resident set) and, on CUDA, peak GPU memory, per configuration;
* video decode and mask writing, per frame, apart from the model;
* end to end, per backend and min_dim: ``hodor-run``'s own path (the same functions) on a generated
  ``--e2e-frames``-frame H.264 clip, writing masks and the overlay, beside the model alone
  (``VideoSession.run_device``, chunked backbone) on the same frames; their ratio; the share of the
  wall time spent in the network's stages; and ``hodor-run``'s start-up in fresh processes
  (``--startup-frames``), apart from its per-frame cost;
* with ``--peers``: other methods (Cutie, SAM 2.1) on the same frames with the same objects, each
  through its own public API, at fp32 and at its own recommended fast settings.

Weights are random (a fixed seed): speed does not depend on weight values. Frames are synthetic.
Results go to ``OUT/fps.json``, ``OUT/fps.md``, ``OUT/fps_vs_objects.png`` and a table on stdout.
The parts live in ``benchmarks/fpsbench/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # Run as a script from a checkout without an installed copy.
    sys.path.insert(0, str(REPO_ROOT))

from fpsbench.backends import ALL_BACKENDS, BACKENDS, BuildContext  # noqa: E402
from fpsbench.end_to_end import measure_all as measure_end_to_end  # noqa: E402
from fpsbench.grid import Grid, GridOutcome  # noqa: E402
from fpsbench.io_cost import measure_io  # noqa: E402
from fpsbench.machine import describe_machine, usable_cpus  # noqa: E402
from fpsbench.official import run_official  # noqa: E402
from fpsbench.output import write_outputs  # noqa: E402
from fpsbench.peers import DEFAULT_PEERS, PEERS, SETTINGS, WEIGHTS_NOTE, PeerPool, plan_variants  # noqa: E402
from fpsbench.plan import Plan, make_plan  # noqa: E402
from fpsbench.results import (  # noqa: E402
    IoResult,
    PeersOutcome,
    Report,
    RunDescription,
    Settings,
    SystemStatus,
)
from fpsbench.synthetic import input_size  # noqa: E402
from fpsbench.systems import Unavailable  # noqa: E402
from fpsbench.table import format_table  # noqa: E402
from fpsbench.weights import WEIGHT_SEED, ModelStore  # noqa: E402
from hodor.config import HodorConfig, load_config, parse_config, with_dims  # noqa: E402
from hodor.engine.backends.openvino_backend import STATIC_SHAPES_AFTER  # noqa: E402
from hodor.engine.loop.preprocess import frame_geometry  # noqa: E402
from hodor.errors import HodorError  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FPS and per-stage latency of every backend, side by side "
        "(random weights, synthetic frames). Says up front what it will run and roughly how long.",
    )
    p.add_argument("--quick", action="store_true", help="a small setting: about a minute on 2 CPU cores")
    p.add_argument("--backends", nargs="+", choices=ALL_BACKENDS, help="default: all")
    p.add_argument("--objects", nargs="+", type=int, help="object counts (default 1 2 4 8)")
    p.add_argument("--min-dims", nargs="+", type=int, help="processing sizes (default 480 720)")
    p.add_argument("--window", type=int, default=7, help="temporal window (default 7)")
    p.add_argument("--warmup", type=int, help="untimed frames per session (default window + 3)")
    p.add_argument("--frames", type=int, help="frames per timed run (default 10)")
    p.add_argument("--repeats", type=int, help="timed runs per configuration (default 5)")
    p.add_argument("--streams", type=int, help="concurrent videos for throughput; 0 skips it (default 2)")
    p.add_argument("--throughput-repeats", type=int, help="timed runs for throughput (default: --repeats)")
    p.add_argument(
        "--batch-streams",
        nargs="+",
        type=int,
        metavar="N",
        help="videos per BatchSession, each count measured against as many separate sessions; "
        "0 skips (default 1 4 16 64; --quick: 1 2)",
    )
    p.add_argument("--io-frames", type=int, help="frames for the decode / mask-writing figures (default 30)")
    p.add_argument(
        "--e2e-frames",
        type=int,
        help="frames of the end-to-end clip (hodor-run's path, masks and overlay written); 0 skips "
        "the end-to-end runs (default 300; --quick 12)",
    )
    p.add_argument("--e2e-repeats", type=int, help="end-to-end runs per backend and min_dim (default 3)")
    p.add_argument(
        "--e2e-objects",
        type=int,
        help="objects in the end-to-end clip (default 4, or --objects' largest if less)",
    )
    p.add_argument(
        "--startup-frames",
        type=int,
        help="frames of the clip hodor-run starts on in fresh processes, to time its start-up; 0 skips "
        "(default 16; --quick 4)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and ONNX Runtime (default: each backend's own, all usable cores)",
    )
    p.add_argument("--config", type=Path, help="a checkpoint's config.yaml (default: the official defaults)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory (default bench-out)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("HODOR_BENCH_CACHE", Path.home() / ".cache" / "hodor-engine" / "bench")),
        help="where random weights and exports are cached (default ~/.cache/hodor-engine/bench)",
    )
    p.add_argument("--official", type=Path, metavar="PATH", help="a checkout of the public HODOR repository")
    p.add_argument("--official-config", type=Path, help="config.yaml for --official (default: its own)")
    p.add_argument(
        "--peers",
        nargs="*",
        choices=sorted(PEERS),
        metavar="PEER",
        help="also measure other methods through their own APIs (pip install 'hodor-engine[peers]'): "
        f"{', '.join(sorted(PEERS))}; --peers alone: {' '.join(DEFAULT_PEERS)}",
    )
    p.add_argument(
        "--peer-settings",
        nargs="+",
        choices=SETTINGS,
        default=list(SETTINGS),
        help="fp32, and/or fast: each peer's own recommended fast settings (CUDA: half-precision "
        "autocast, SAM 2.1 also torch.compile) (default: both)",
    )
    p.add_argument(
        "--peer-native",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run SAM 2.1 at its native 1024x1024 besides each min_dim (default: on)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.objects = args.objects or ([1, 2] if quick else [1, 2, 4, 8])
    args.min_dims = args.min_dims or ([128] if quick else [480, 720])
    # --quick: a short warm-up, so the descriptor ring is not yet full (history_slots in the JSON
    # says how long it was); fine for a smoke run, not for figures to quote.
    full = args.window + STATIC_SHAPES_AFTER  # the ring full, and OpenVINO's fixed-shape compiles made
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else full)
    args.frames = args.frames or (2 if quick else 10)
    args.repeats = args.repeats or (3 if quick else 5)
    args.streams = args.streams if args.streams is not None else 2
    args.throughput_repeats = args.throughput_repeats or (1 if quick else args.repeats)
    args.batch_streams = args.batch_streams or ([1, 2] if quick else [1, 4, 16, 64])
    if args.batch_streams == [0]:
        args.batch_streams = []
    args.io_frames = args.io_frames or (8 if quick else 30)
    args.e2e_frames = args.e2e_frames if args.e2e_frames is not None else (12 if quick else 300)
    args.e2e_repeats = args.e2e_repeats or (1 if quick else 3)
    args.e2e_objects = args.e2e_objects or min(4, max(args.objects))
    args.startup_frames = args.startup_frames if args.startup_frames is not None else (4 if quick else 16)
    if args.peers is not None and not args.peers:
        args.peers = list(DEFAULT_PEERS)
    if (
        min(args.objects) < 1
        or min(args.min_dims) < 32
        or args.window < 0
        or args.frames < 1
        or (args.threads is not None and args.threads < 1)
        or any(n < 1 for n in args.batch_streams)
        or args.e2e_frames < 0
        or args.startup_frames < 0
        or args.e2e_objects < 1
    ):
        p.error(
            "objects >= 1, min-dims >= 32, window >= 0, frames >= 1, threads >= 1, e2e-objects >= 1, "
            "e2e-frames >= 0, startup-frames >= 0 and batch-streams >= 1 (or 0 alone) are required"
        )
    return args


class Console:
    """Log lines on stderr with the elapsed time, kept clear of the progress bar."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.bar: Any = None

    def log(self, msg: str) -> None:
        tqdm.write(f"[{time.perf_counter() - self.started:6.1f} s] {msg}", file=sys.stderr)

    def describe(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)

    def frame(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def build_backends(
    names: list[str], ctx: BuildContext, console: Console
) -> tuple[dict[str, Any], dict[str, SystemStatus]]:
    """Build every requested backend once; a failure is a reason, listed, never a fake number."""
    built: dict[str, Any] = {}
    status: dict[str, SystemStatus] = {}
    for name in names:
        spec = BACKENDS[name]
        console.log(f"setting up {name} ({spec.description}) on {ctx.device}")
        t0 = time.perf_counter()
        try:
            built[name] = spec.build(ctx)
        except (Unavailable, HodorError) as exc:
            status[name] = SystemStatus(name, spec.description, "skipped", reason=str(exc))
            console.log(f"  skipped: {exc}")
            continue
        threads = (
            torch.get_num_threads() if name.startswith("torch") else getattr(built[name], "threads", None)
        )
        status[name] = SystemStatus(
            name, spec.description, "measured", setup_s=time.perf_counter() - t0, cpu_threads=threads
        )
    return built, status


def measure_all_io(settings: Settings, console: Console) -> list[IoResult]:
    """Guarded: a codec problem must neither cost the model figures nor go unseen."""
    io = []
    with tempfile.TemporaryDirectory(prefix="hodor-bench-io-") as tmp:
        for d in settings.min_dims:
            try:
                io.append(measure_io(d, settings.io_frames, max(3, settings.repeats), Path(tmp)))
            except Exception as exc:
                console.log(f"I/O measurement at min_dim {d} failed: {exc!r}")
                io.append(IoResult(min_dim=d, input_size=list(input_size(d)), frames=0, failed=repr(exc)))
    return io


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        min_dims=sorted(set(args.min_dims)),
        objects=sorted(set(args.objects)),
        window=args.window,
        warmup=args.warmup,
        frames=args.frames,
        repeats=args.repeats,
        streams=args.streams,
        throughput_repeats=args.throughput_repeats,
        io_frames=args.io_frames,
        batch_streams=sorted(set(args.batch_streams)),
        e2e_frames=args.e2e_frames,
        e2e_repeats=args.e2e_repeats,
        e2e_objects=args.e2e_objects,
        startup_frames=args.startup_frames,
    )


def open_peers(
    args: argparse.Namespace, device: torch.device
) -> tuple[PeerPool | None, dict[str, SystemStatus]]:
    """The requested peer variants that can run here, and the reasons of those that cannot."""
    if not args.peers:
        return None, {}
    pool = PeerPool(plan_variants(args.peers, args.peer_settings, args.peer_native), device)
    unavailable: dict[str, SystemStatus] = {}
    for variant in pool.variants:
        try:
            pool.check(variant)
        except Unavailable as exc:
            unavailable[variant.name] = SystemStatus(variant.name, variant.spec.api, "skipped", str(exc))
    pool.variants = [v for v in pool.variants if v.name not in unavailable]
    return pool, unavailable


def peers_outcome(
    args: argparse.Namespace,
    pool: PeerPool | None,
    unavailable: dict[str, SystemStatus],
    outcome: GridOutcome,
) -> PeersOutcome | None:
    if pool is None:
        return None
    variants = []
    for v in plan_variants(args.peers, args.peer_settings, args.peer_native):
        if v.name in unavailable:
            variants.append(unavailable[v.name])
        elif v.name in outcome.dropped:
            state, reason = outcome.dropped[v.name]
            variants.append(SystemStatus(v.name, v.spec.api, state, reason=reason))  # type: ignore[arg-type]
        else:
            described = pool.descriptions.get(v.name, v.spec.api)
            variants.append(SystemStatus(v.name, described, "measured", setup_s=pool.build_s.get(v.name)))
    return PeersOutcome(
        weights=WEIGHTS_NOTE,
        api={name: PEERS[name].api for name in args.peers},
        variants=variants,
        results=outcome.peer_results,
        ratios=outcome.peer_ratios,
    )


def describe_run(args: argparse.Namespace, device: torch.device, config: HodorConfig) -> RunDescription:
    return RunDescription(
        device=str(device),
        config=str(args.config) if args.config else "official defaults",
        model=dict(config.model.__dict__),
        weights=f"random (torch.manual_seed({WEIGHT_SEED})): speed does not depend on weight values",
        input="synthetic 16:9 RGB frames whose short side is min_dim; reference mask at frame 0",
        timing="CUDA events" if device.type == "cuda" else "time.perf_counter",
        stage_split="backbone/encode/decode timed at the backend seam; runtime = frame - stages",
    )


def max_padded_side(config: HodorConfig, min_dims: list[int]) -> int:
    """The longest side any frame of the grid is padded to (the exports' limits must cover it)."""
    sides = []
    for d in min_dims:
        dims = with_dims(config, d, None).input
        sides += frame_geometry(*input_size(d), dims.min_dim, dims.max_dim).padded
    return max(sides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but PyTorch sees no CUDA GPU", file=sys.stderr)
        return 2
    try:
        base_cfg = load_config(args.config) if args.config else parse_config({})
    except HodorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = settings_from(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(config=base_cfg, cache_dir=args.cache_dir, log=console.log)
    pool, peers_unavailable = open_peers(args, device)
    wanted = args.backends or list(ALL_BACKENDS)
    ctx = BuildContext(
        device=device,
        store=store,
        window=args.window,
        max_objects=max(*settings.objects, settings.e2e_objects),
        threads=args.threads,
        max_padded_side=max_padded_side(base_cfg, settings.min_dims),
        max_streams=max(settings.batch_streams, default=1),
    )

    def plan_for(backends: list[str]) -> Plan:
        unavailable = {n: s.reason or "" for n, s in peers_unavailable.items()}
        variants = pool.variants if pool else []
        cached = ctx.export_cached("fp32", False)
        return make_plan(backends, variants, unavailable, settings, device, usable_cpus(), cached)

    console.log(plan_for(wanted).text())
    built, status = build_backends(wanted, ctx, console)
    machine = describe_machine(device)  # before the work: its load average is the one at the start
    io = measure_all_io(settings, console)
    plan = plan_for(list(built))
    with tqdm(total=plan.frames, unit="frame", desc="fps.py", file=sys.stderr, dynamic_ncols=True) as bar:
        console.bar = bar
        grid = Grid(settings, device, base_cfg, built, pool, console.frame, console.log, console.describe)
        outcome = grid.run()
        end_to_end = measure_end_to_end(
            settings,
            {n: b for n, b in built.items() if n not in outcome.dropped},
            ctx,
            base_cfg,
            console.frame,
            console.log,
            console.describe,
        )
        console.bar = None
    for name, (_, reason) in outcome.dropped.items():
        if name in status:
            status[name] = SystemStatus(name, status[name].description, "failed", reason=reason)

    official = None
    if args.official is not None:
        with tempfile.TemporaryDirectory(prefix="hodor-bench-") as tmp:
            checkout = args.official.expanduser().resolve()
            official = run_official(checkout, device, settings, Path(tmp), args.official_config, console.log)
        if official.status != "measured":
            console.log(f"official: {official.status}: {official.reason}")

    report = Report(
        command=" ".join([Path(sys.executable).name, *sys.argv])
        if argv is None
        else "fps.py " + " ".join(argv),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        quick=args.quick,
        machine=machine,
        settings=settings,
        run=describe_run(args, device, base_cfg),
        backends=[status[n] for n in wanted],
        setup_s=store.setup_s,
        results=outcome.results,
        throughput=outcome.throughput,
        batched=outcome.batched,
        ratios=outcome.ratios,
        io=io,
        official=official,
        peers=peers_outcome(args, pool, peers_unavailable, outcome),
        files={},
        end_to_end=end_to_end,
    )
    report.elapsed_s = time.perf_counter() - console.started
    write_outputs(report, args.out, console.log)
    print(format_table(report))
    measured = sum(1 for b in report.backends if b.status == "measured")
    measured += sum(1 for v in report.peers.variants if v.status == "measured") if report.peers else 0
    print(
        f"\n{measured} system(s) measured at {len(settings.min_dims) * len(settings.objects)} "
        f"configuration(s); wrote {args.out / 'fps.json'}, {args.out / 'fps.md'} and "
        f"{args.out / 'fps_vs_objects.png'} in {report.elapsed_s:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
