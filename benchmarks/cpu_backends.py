#!/usr/bin/env python
"""The CPU backends and their options side by side: per-stage latency, whole frames, start-up, error.

    python benchmarks/cpu_backends.py                       # 480p, 4 objects, window 7, every candidate
    python benchmarks/cpu_backends.py --candidates onnxruntime-baseline openvino openvino-bf16
    python benchmarks/cpu_backends.py --min-dim 720 --objects 8 --repeats 9 --json cpu.json

What it does, in one process:

1. **Inputs.** Random weights (``torch.manual_seed(0)``) saved as an official-format checkpoint and
   exported with ``hodor-export``'s own code (both cached under ``--cache-dir``). A synthetic 16:9
   clip whose short side is ``--min-dim``, ``--objects`` discs in the reference mask of frame 0.
   The plain PyTorch model (fp32, eager) runs ``window + 2`` frames of it; the inputs and outputs
   of the last frame's backbone, encode and decode calls are recorded (the descriptor ring is full:
   ``window + 1`` history slots).
2. **Error.** Every candidate runs the recorded inputs; each stage output is compared with the
   PyTorch model's: ``max |out - ref| / max |ref|`` per output (as in ``hodor.kernels.testing``).
3. **Start-up.** Opening each candidate (reading and checking graphs, creating sessions, compiling)
   is timed twice: with an empty cache directory (``cold``) and again with the cache it wrote
   (``warm``); the first call of each stage (shape-specific preparation) is reported apart.
4. **Stages.** ``--repeats`` rounds; in each, every candidate runs backbone, encode and decode once
   on the recorded inputs. Rounds interleave the candidates (A, B, C, A, B, C, ...), so load from
   other processes hits all of them alike; ratios are per round, against ``--baseline``.
5. **Frames.** Each candidate gets its own ``VideoSession`` on the clip, warmed up for
   ``window + 1`` frames; then ``--repeats`` interleaved runs of ``--frames`` frames each. FPS per
   run, and the ratio to the baseline per round: the whole ``step`` (pre-processing, the three
   stages, resampling, softmax, arg-max, the ring), as ``benchmarks/fps.py`` times it.

Every figure comes with its spread and the process's CPU seconds per wall second (about the
thread count when the machine is otherwise idle, lower when other processes take the cores).
Candidates that cannot run here (a package missing, no bf16 on this CPU) are listed as skipped,
with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout, or loaded by path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import hodor  # noqa: E402
from hodor.config import HodorConfig, config_beside, parse_config, with_dims  # noqa: E402
from hodor.engine.backends.openvino_backend import STATIC_SHAPES_AFTER  # noqa: E402
from hodor.errors import HodorError  # noqa: E402
from hodor.kernels.testing import relative_error  # noqa: E402

STAGES = ("backbone", "encode", "decode")
WEIGHT_SEED = 0
EXPORT_MAX_OBJECTS = 8
EXPORT_MAX_WINDOW = 16


class Unavailable(Exception):
    """A candidate that cannot run on this machine; the message says why."""


# --------------------------------------------------------------------------------------------------
# Weights, export and clip


@dataclass
class Model:
    config: HodorConfig  # with the benchmark's min_dim
    checkpoint: Path
    export_dir: Path


def _digest(*packages: str) -> str:
    h = hashlib.sha256()
    for package in packages:
        root = Path(__import__(package, fromlist=["_"]).__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def prepare_model(cache_dir: Path, min_dim: int, log: Callable[[str], None]) -> Model:
    """Random weights as a checkpoint and their export, cached by the sources that make them."""
    import yaml

    from hodor.export import cli as export_cli
    from hodor.model import HodorNet

    base = parse_config({})
    # The export traces hodor.kernels' references too: any of the three changing makes a new one.
    sources = _digest("hodor.model", "hodor.kernels", "hodor.export")
    key_text = json.dumps([hodor.__version__, torch.__version__, WEIGHT_SEED, sources])
    root = cache_dir / f"cpu-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}"
    checkpoint, export_dir = root / "model.pth", root / "model.hodor"
    if not checkpoint.is_file():
        root.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(WEIGHT_SEED)
        net = HodorNet(base.model).eval()
        tmp = root / "model.pth.partial"
        torch.save({"model": net.state_dict()}, tmp)
        # The official layout of config.yaml, so that loading reads what the model was built with.
        m = base.model
        raw = {
            "MODEL": {
                "TRANSFORMER_PRE_NORMALIZE": m.pre_normalize,
                "ENCODER_LAYERS": m.encoder_layers,
                "DECODER_LAYERS": m.decoder_layers,
                "NUM_ATTN_HEADS": m.num_heads,
                "NUM_BG_DESCRIPTORS": m.num_bg_descriptors,
                "NUM_CATCH_ALL_QUERIES": m.num_catch_all_queries,
                "POS_ENCODINGS_IN_FMQ": m.pos_encodings_in_encoder,
                "POS_ENCODINGS_IN_FQM": m.pos_encodings_in_decoder,
            }
        }
        (root / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        tmp.replace(checkpoint)
    if not (export_dir / "manifest.json").is_file():
        log(f"exporting the random weights into {export_dir} (a few minutes; cached for later runs)")
        argv = [str(checkpoint), "--out", str(export_dir), "--tensorrt", "off"]
        argv += ["--max-objects", str(EXPORT_MAX_OBJECTS), "--max-window", str(EXPORT_MAX_WINDOW)]
        export_cli.run_export(export_cli.build_parser().parse_args(argv), say=lambda line: log("  " + line))
    return Model(with_dims(base, min_dim, None), checkpoint, export_dir)


class Clip:
    """Deterministic 16:9 RGB frames (gradients, noise, moving discs) and the reference ids of frame 0."""

    def __init__(self, min_dim: int, num_objects: int, frames: int = 8, seed: int = 0) -> None:
        h, w = min_dim, 2 * round(min_dim * 8 / 9)
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cols = math.ceil(math.sqrt(num_objects * w / h))
        rows = math.ceil(num_objects / cols)
        self.frames, ids = [], np.zeros((h, w), np.uint8)
        for t in range(frames):
            img = np.stack(
                [
                    127 + 90 * np.sin(xx / 37 + t / 3),
                    127 + 90 * np.cos(yy / 23 - t / 5),
                    127 + 50 * np.sin((xx + yy) / 51),
                ],
                axis=-1,
            )
            img += rng.normal(0, 8, img.shape).astype(np.float32)
            for k in range(num_objects):
                r, c = divmod(k, cols)
                cy, cx = (r + 0.5) * h / rows, (c + 0.5) * w / cols + 4 * t
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.35 * min(h / rows, w / cols)) ** 2
                img[disc] = (40 + 50 * k) % 256
                if t == 0:
                    ids[disc] = k + 1
            self.frames.append(np.clip(img, 0, 255).astype(np.uint8))
        self.reference = ids

    def frame(self, t: int) -> np.ndarray:
        return self.frames[t % len(self.frames)]


# --------------------------------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    open: Callable[[Model, Path | None], Any]  # (model, cache dir or None) -> backend


THREADS: int | None = None
"""``--threads``: threads per candidate (None: each backend's default, one per usable core)."""


def _onnxruntime(**options: Any) -> Callable[[Model, Path | None], Any]:
    def open_(model: Model, cache_dir: Path | None) -> Any:
        try:
            from hodor.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
        except ImportError as exc:
            raise Unavailable(str(exc)) from None
        opts = dict(options)
        if opts.pop("cache", True) and cache_dir is not None:
            opts["cache_dir"] = cache_dir
        else:
            opts["cache"] = False
        return OnnxRuntimeBackend(model.export_dir, "cpu", config=model.config, threads=THREADS, **opts)

    return open_


def _openvino(precision: str, **options: Any) -> Callable[[Model, Path | None], Any]:
    def open_(model: Model, cache_dir: Path | None) -> Any:
        try:
            from hodor.engine.backends.openvino_backend import OpenVinoBackend
        except ImportError as exc:
            raise Unavailable(str(exc)) from None
        cache = {"cache_dir": cache_dir} if cache_dir is not None else {"cache": False}
        return OpenVinoBackend(
            model.export_dir,
            "cpu",
            config=model.config,
            precision=precision,
            threads=THREADS,
            **cache,
            **options,
        )

    return open_


def _torch(precision: str, **options: Any) -> Callable[[Model, Path | None], Any]:
    def open_(model: Model, cache_dir: Path | None) -> Any:
        from hodor.engine.backends.torch_backend import open_torch_backend

        return open_torch_backend(
            model.checkpoint, model.config, "cpu", kernels="torch", dtype=precision, **options
        )

    return open_


def reference_backend(model: Model) -> Any:
    """The plain PyTorch model in fp32, every computation its reference (``grid_sample`` in the
    deformable convolutions, not the CPU's gathered sampling): what every candidate is checked against."""
    from hodor.engine.backends.torch_backend import open_torch_backend

    return open_torch_backend(
        model.checkpoint, model.config, "cpu", kernels="torch", dtype="fp32", deform_sampling="grid"
    )


def record_reference(model: Model, clip: Clip, window: int, log: Callable[[str], None]) -> Recorder:
    """The reference (:func:`reference_backend`) run over ``window + 2`` frames of ``clip``: its
    recorder holds the last frame's stage calls (the descriptor ring full)."""
    from hodor.engine.loop.session import VideoSession

    recorder = Recorder(reference_backend(model))
    session = VideoSession(recorder, temporal_window=window)
    log(f"recording the stage inputs of frame {window + 1} with PyTorch fp32")
    for t in range(window + 2):
        session.step(clip.frame(t), clip.reference if t == 0 else None)
    return recorder


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate(
            "onnxruntime-baseline",
            "ONNX Runtime as before these options: no cached optimised graphs, spinning threads",
            _onnxruntime(cache=False, spinning=True),
        ),
        Candidate(
            "onnxruntime",
            "ONNX Runtime, the backend's defaults (cached graphs, sleeping threads)",
            _onnxruntime(),
        ),
        Candidate(
            "onnxruntime-nospin",
            "ONNX Runtime, idle threads sleep instead of spinning (no cached graphs)",
            _onnxruntime(cache=False, spinning=False),
        ),
        Candidate(
            "openvino",
            "OpenVINO, fp32 (deformable convolutions as OpenVINO's own, dense 3x3 ones as Winograd "
            "F(6x6, 3x3) through the engine's operations)",
            _openvino("fp32"),
        ),
        Candidate(
            "openvino-f4",
            "OpenVINO, fp32, dense 3x3 convolutions as Winograd F(4x4, 3x3) through the engine's "
            "operations (half F(6x6, 3x3)'s rounding error, more products): before F(6x6, 3x3)",
            _openvino("fp32", fp32_winograd_tile=4),
        ),
        Candidate(
            "openvino-graph-winograd",
            "OpenVINO, fp32, Winograd F(4x4, 3x3) in plain graph operations (no engine operations): "
            "before its transforms became operations, and where no C++ compiler is found",
            _openvino("fp32", engine_ops=False),
        ),
        Candidate(
            "openvino-direct",
            "OpenVINO, fp32, dense 3x3 convolutions as exported (direct): before Winograd",
            _openvino("fp32", winograd=False),
        ),
        Candidate(
            "openvino-bf16",
            "OpenVINO, bf16 on all three stages (--precision bf16; deformable convolutions as sampled "
            "columns and a bf16 product, dense 3x3 ones as Winograd F(3x3, 3x3))",
            _openvino("bf16"),
        ),
        Candidate(
            "openvino-bf16-f2",
            "OpenVINO, bf16, dense 3x3 convolutions as Winograd F(2x2, 3x3) (less error, more "
            "products): before F(3x3, 3x3)",
            _openvino("bf16", bf16_winograd_tile=2),
        ),
        Candidate(
            "openvino-bf16-direct",
            "OpenVINO, bf16, dense 3x3 convolutions as exported (direct): before Winograd in bf16",
            _openvino("bf16", winograd=False),
        ),
        Candidate(
            "openvino-bf16-fused",
            "OpenVINO, bf16, deformable convolutions as OpenVINO's own (fp32 products): before columns",
            _openvino("bf16", deform_columns=False),
        ),
        Candidate(
            "openvino-shapefree",
            "OpenVINO, fp32, every stage compiled for any shape only (before fixed-shape compiles)",
            _openvino("fp32", static_shapes=False),
        ),
        Candidate(
            "openvino-bf16-shapefree",
            "OpenVINO, bf16, every stage compiled for any shape only (before fixed-shape compiles)",
            _openvino("bf16", static_shapes=False),
        ),
        Candidate(
            "openvino-gridsample",
            "OpenVINO, fp32, the decoder graph as exported (GridSample and MatMul): as before",
            _openvino("fp32", native_deform_conv=False),
        ),
        Candidate(
            "openvino-bf16-gridsample",
            "OpenVINO, bf16 backbone and encoder, the exported decoder in fp32: --precision bf16 before",
            _openvino("bf16", native_deform_conv=False),
        ),
        Candidate(
            "torch",
            "PyTorch eager, fp32 (the backend's defaults: gathered deformable sampling)",
            _torch("fp32"),
        ),
        Candidate("torch-bf16", "PyTorch eager, bf16 weights and activations", _torch("bf16")),
        Candidate(
            "torch-compile",
            "PyTorch, fp32, the backbone through torch.compile (Inductor; --backbone compile)",
            _torch("fp32", backbone="compile"),
        ),
        Candidate(
            "torch-bf16-compile",
            "PyTorch, bf16, the backbone through torch.compile (Inductor; --backbone compile)",
            _torch("bf16", backbone="compile"),
        ),
        Candidate(
            "torch-gridsample",
            "PyTorch eager, fp32, deformable sampling by grid_sample (the reference; as before)",
            _torch("fp32", deform_sampling="grid"),
        ),
        Candidate(
            "torch-bf16-gridsample",
            "PyTorch eager, bf16, deformable sampling by grid_sample (as before)",
            _torch("bf16", deform_sampling="grid"),
        ),
    )
}
DEFAULT_CANDIDATES = (
    "onnxruntime-baseline",
    "onnxruntime",
    "openvino",
    "openvino-bf16",
    "torch",
    "torch-bf16",
)


# --------------------------------------------------------------------------------------------------
# Recording one frame's stage calls


@dataclass
class StageCall:
    args: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


class Recorder:
    """Wraps a backend; keeps the arguments and outputs of the latest call of each stage."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[str, StageCall] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _record(self, stage: str, fn: Callable[..., Any], *args: torch.Tensor) -> Any:
        out = fn(*args)
        outs = out if isinstance(out, tuple) else (out,)
        self.calls[stage] = StageCall(
            tuple(a.detach().clone() for a in args), tuple(o.detach().float().clone() for o in outs)
        )
        return out

    def backbone(self, images: torch.Tensor) -> Any:
        return self._record("backbone", self.inner.backbone, images)

    backbone_transient = backbone  # recorded alike (the recording is a clone)

    def encode(self, *args: torch.Tensor) -> Any:
        return self._record("encode", self.inner.encode, *args)

    def decode(self, *args: torch.Tensor) -> Any:
        return self._record("decode", self.inner.decode, *args)


def call_stage(backend: Any, stage: str, call: StageCall) -> tuple[torch.Tensor, ...]:
    out = getattr(backend, stage)(*call.args)
    return tuple(o.float() for o in (out if isinstance(out, tuple) else (out,)))


# --------------------------------------------------------------------------------------------------
# Measuring


def stats(values: Sequence[float]) -> dict[str, Any]:
    xs = sorted(values)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "values": xs}


@contextlib.contextmanager
def cpu_clock(into: list[float]):
    """Appends the process's CPU seconds per wall second over the block."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into.append((time.process_time() - cpu) / max(1e-9, time.perf_counter() - wall))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of ``fn()``. With one thread, CPU seconds hardly depend on what
    else runs on the machine: the cost of the arithmetic, whatever the load."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class Result:
    name: str
    description: str
    startup_s: dict[str, float] = field(default_factory=dict)
    first_call_ms: dict[str, float] = field(default_factory=dict)
    shape_compile_s: float = 0.0
    rel_err: dict[str, list[float]] = field(default_factory=dict)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    stage_ratio: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    stage_cpu_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    stage_cpu_per_wall: list[float] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    fps_ratio: list[float] = field(default_factory=list)
    frame_cpu_per_wall: list[float] = field(default_factory=list)


_CACHE_DIRS: list[tempfile.TemporaryDirectory] = []


def open_candidates(
    names: Sequence[str], model: Model, calls: dict[str, StageCall], log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Result], dict[str, str]]:
    backends, results, skipped = {}, {}, {}
    for name in names:
        cand = CANDIDATES[name]
        result = Result(name, cand.description)
        # The cache directory lives as long as the backend, which may read it again (OpenVINO's
        # fixed-shape compiles read the graph it kept there); removed when the script ends.
        cache = tempfile.TemporaryDirectory(prefix="hodor-cpu-bench-")
        _CACHE_DIRS.append(cache)
        try:
            tmp = Path(cache.name)
            result.startup_s["cold"] = _timed(lambda: cand.open(model, tmp))  # noqa: B023
            start = time.perf_counter()
            backend = cand.open(model, tmp)
            result.startup_s["warm"] = time.perf_counter() - start
        except (HodorError, Unavailable) as exc:
            cache.cleanup()
            skipped[name] = " ".join(str(exc).split())
            log(f"{name}: skipped ({skipped[name]})")
            continue
        for stage in STAGES:
            start = time.perf_counter()
            outs = call_stage(backend, stage, calls[stage])
            result.first_call_ms[stage] = 1e3 * (time.perf_counter() - start)
            # Calls up to the one at which a backend that compiles again for shapes that recur
            # (OpenVINO) does it: made now, not in the timed rounds.
            for _ in range(STATIC_SHAPES_AFTER - 1):
                again = call_stage(backend, stage, calls[stage])
            names_ = (
                ("f4", "f8")
                if stage == "backbone"
                else ("fg_desc", "bg_desc")
                if stage == "encode"
                else ("logits",)
            )
            for out_name, got, got_again, want in zip(names_, outs, again, calls[stage].outputs, strict=True):
                result.rel_err[out_name] = [max(relative_error(got, want), relative_error(got_again, want))]
        result.shape_compile_s = float(getattr(backend, "static_compile_s", 0.0))
        log(
            f"{name}: start-up cold {result.startup_s['cold']:.2f} s, warm {result.startup_s['warm']:.2f} s; "
            + ", ".join(f"{k} rel err {v[0]:.2e}" for k, v in result.rel_err.items())
        )
        backends[name], results[name] = backend, result
    return backends, results, skipped


def measure_stages(
    backends: dict[str, Any],
    results: dict[str, Result],
    calls: dict[str, StageCall],
    repeats: int,
    baseline: str,
) -> None:
    for _ in range(repeats):
        round_ms: dict[str, dict[str, float]] = {}
        for name, backend in backends.items():
            round_ms[name] = {}
            with cpu_clock(results[name].stage_cpu_per_wall):
                for s in STAGES:
                    wall, cpu = _timed_cpu(lambda b=backend, s=s: call_stage(b, s, calls[s]))
                    round_ms[name][s] = 1e3 * wall
                    results[name].stage_cpu_ms[s].append(1e3 * cpu)
        for name, ms in round_ms.items():
            for s in STAGES:
                results[name].stage_ms[s].append(ms[s])
                if baseline in round_ms:
                    results[name].stage_ratio[s].append(round_ms[baseline][s] / ms[s])


def measure_frames(
    backends: dict[str, Any],
    results: dict[str, Result],
    clip: Clip,
    window: int,
    frames: int,
    repeats: int,
    baseline: str,
) -> None:
    from hodor.engine.loop.session import VideoSession

    sessions, clocks = {}, {}
    for name, backend in backends.items():
        session = VideoSession(backend, temporal_window=window)
        # A full history window (frame `window`), then as many frames as it takes for OpenVINO's
        # fixed-shape compiles of the steady state to be made before the timed rounds.
        warmup = window + STATIC_SHAPES_AFTER
        for t in range(warmup):
            session.step(clip.frame(t), clip.reference if t == 0 else None)
        sessions[name], clocks[name] = session, warmup
    for _ in range(repeats):
        round_fps = {}
        for name, session in sessions.items():
            with cpu_clock(results[name].frame_cpu_per_wall):
                start = time.perf_counter()
                for _ in range(frames):
                    session.step(clip.frame(clocks[name]))
                    clocks[name] += 1
                round_fps[name] = frames / (time.perf_counter() - start)
        for name, fps in round_fps.items():
            results[name].fps.append(fps)
            if baseline in round_fps:
                results[name].fps_ratio.append(fps / round_fps[baseline])


# --------------------------------------------------------------------------------------------------
# Report


def _spread(values: Sequence[float], digits: int = 1, scale: float = 1.0) -> str:
    if not values:
        return "-"
    xs = [v * scale for v in values]
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"CPU backends at min_dim {s['min_dim']}, {s['objects']} objects, window {s['window']} "
        f"({s['repeats']} interleaved rounds; ratios per round against {s['baseline']}; "
        "median (min-max)); machine: "
        f"{report['machine']['cpu']}, {report['machine']['usable_cores']} usable cores, "
        f"load average {report['load_average']['before']} -> {report['load_average']['after']}",
        "",
        "| candidate | backbone ms | encode ms | decode ms | stages x baseline (sum) | CPU/wall | "
        "FPS (whole step) | FPS x baseline | CPU/wall |",
        "| --- | --- | --- | --- | --- | ---: | --- | --- | ---: |",
    ]
    for r in report["results"]:
        sums = [
            sum(r["stage_ms"][st]["values"][i] for st in STAGES)
            for i in range(r["stage_ms"]["backbone"]["n"])
        ]
        base = next((b for b in report["results"] if b["name"] == s["baseline"]), None)
        ratio = "-"
        if base is not None:
            base_sums = [
                sum(base["stage_ms"][st]["values_in_order"][i] for st in STAGES) for i in range(len(sums))
            ]
            mine = [sum(r["stage_ms"][st]["values_in_order"][i] for st in STAGES) for i in range(len(sums))]
            ratio = _spread([b / m for b, m in zip(base_sums, mine, strict=True)], 2)
        lines.append(
            f"| {r['name']} | "
            + " | ".join(_spread(r["stage_ms"][st]["values_in_order"]) for st in STAGES)
            + f" | {ratio} | {statistics.median(r['stage_cpu_per_wall']):.2f} | "
            f"{_spread(r['fps'], 3)} | {_spread(r['fps_ratio'], 2)} | "
            f"{statistics.median(r['frame_cpu_per_wall']) if r['frame_cpu_per_wall'] else float('nan'):.2f} |"
        )
    lines += [
        "",
        "Process CPU time per call, ms (with --threads 1: the cost of the arithmetic, nearly load-free):",
        "",
        "| candidate | backbone | encode | decode | sum x baseline |",
        "| --- | --- | --- | --- | --- |",
    ]
    base = next((b for b in report["results"] if b["name"] == s["baseline"]), None)
    for r in report["results"]:
        ratio = "-"
        if base is not None:
            b_sum = sum(base["stage_cpu_ms"][st]["median"] for st in STAGES)
            ratio = f"{b_sum / sum(r['stage_cpu_ms'][st]['median'] for st in STAGES):.2f}"
        lines.append(
            f"| {r['name']} | "
            + " | ".join(_spread(r["stage_cpu_ms"][st]["values"]) for st in STAGES)
            + f" | {ratio} |"
        )
    lines += [
        "",
        "| candidate | start-up cold s | start-up warm s | first call ms (backbone, encode, decode) | "
        "fixed-shape compiles s | relative error vs PyTorch fp32 (worse of the first and third calls) |",
        "| --- | ---: | ---: | --- | ---: | --- |",
    ]
    for r in report["results"]:
        first = ", ".join(f"{r['first_call_ms'][st]:.0f}" for st in STAGES)
        errs = ", ".join(f"{k} {v[0]:.1e}" for k, v in r["rel_err"].items())
        lines.append(
            f"| {r['name']} | {r['startup_s']['cold']:.2f} | {r['startup_s']['warm']:.2f} | "
            f"{first} | {r.get('shape_compile_s', 0.0):.2f} | {errs} |"
        )
    for name, why in report["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    return "\n".join(lines)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"hodor": hodor.__version__, "torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = None
    return out


READS_EXPORT = ("onnxruntime", "openvino")


def add_twins(names: Sequence[str], export_dir: Path) -> list[str]:
    """For each candidate that reads an export, a twin reading ``export_dir`` instead (named
    ``NAME@other``), registered in :data:`CANDIDATES`: two exports of the same weights (say, before
    and after a change to the exported graphs) side by side in one run. Returns the twins' names."""
    twins = []
    for name in names:
        if not name.startswith(READS_EXPORT):
            continue
        cand = CANDIDATES[name]
        twin = f"{name}@other"

        def open_(model: Model, cache_dir: Path | None, cand: Candidate = cand) -> Any:
            return cand.open(Model(model.config, model.checkpoint, export_dir), cache_dir)

        CANDIDATES[twin] = Candidate(twin, f"{cand.description}; export {export_dir}", open_)
        twins.append(twin)
    return twins


def add_clip_options(p: argparse.ArgumentParser) -> None:
    """``--min-dim``, ``--objects``, ``--window``: the frame size, objects and history measured."""
    p.add_argument("--min-dim", type=int, default=480, help="short side of the 16:9 frames (default 480)")
    p.add_argument("--objects", type=int, default=4, help="objects in the reference mask (default 4)")
    p.add_argument("--window", type=int, default=7, help="temporal window (default 7)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--cache-dir``, ``--checkpoint``, ``--export``: what :func:`open_model` takes."""
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("HODOR_BENCH_CACHE", Path.home() / ".cache" / "hodor-engine" / "bench")),
        help="where the random weights and their export are cached",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="measure this checkpoint (config.yaml beside it) instead of random weights; needs --export",
    )
    p.add_argument("--export", type=Path, help="its export directory (hodor-export CHECKPOINT)")


def open_model(args: argparse.Namespace, log: Callable[[str], None]) -> Model:
    """The model those options name: ``--checkpoint`` with ``--export``, else the random weights
    and their export, cached (made on first use)."""
    if args.checkpoint is not None:
        config = with_dims(config_beside(args.checkpoint), args.min_dim, None)
        return Model(config, args.checkpoint, args.export)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    return prepare_model(args.cache_dir, args.min_dim, log)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--candidates",
        nargs="+",
        choices=sorted(CANDIDATES),
        default=list(DEFAULT_CANDIDATES),
        metavar="NAME",
        help="what to compare (default: %(default)s); choices: " + ", ".join(CANDIDATES),
    )
    p.add_argument("--baseline", default="onnxruntime-baseline", help="ratios are against this one")
    add_clip_options(p)
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument(
        "--frames", type=int, default=2, help="frames per whole-step run (default 2); 0: no whole-step runs"
    )
    add_model_options(p)
    p.add_argument(
        "--threads",
        type=int,
        help="threads per candidate (default: each backend's own, one per usable core); 1 makes the CPU-time "
        "column a load-independent measure of each candidate's arithmetic",
    )
    p.add_argument(
        "--also-export",
        type=Path,
        metavar="DIR",
        help="another export of the same weights: each candidate that reads an export also runs on it, "
        "as NAME@other (e.g. the graphs before and after a change, side by side in one run)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also count each stage's arithmetic and time this machine's products (benchmarks/cpu_floor.py): "
        "the floor under every backend, and the bound it sets on their speed-up over the baseline",
    )
    p.add_argument("--json", type=Path, help="also write every figure here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if args.objects > EXPORT_MAX_OBJECTS or args.window > EXPORT_MAX_WINDOW:
        print(f"error: at most {EXPORT_MAX_OBJECTS} objects and window {EXPORT_MAX_WINDOW}", file=sys.stderr)
        return 2
    global THREADS
    THREADS = args.threads
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    if (args.checkpoint is None) != (args.export is None):
        print("error: --checkpoint and --export go together", file=sys.stderr)
        return 2
    model = open_model(args, log)
    clip = Clip(args.min_dim, args.objects)

    recorder = record_reference(model, clip, args.window, log)
    calls = recorder.calls
    floor: dict[str, Any] | None = None
    if args.floor:
        from cpu_floor import measure_probes, stage_flops, winograd_flops

        flops = stage_flops(recorder.inner, calls)
        dense = winograd_flops(recorder.inner, calls)
        log(
            "counted arithmetic per frame: "
            + ", ".join(f"{s} {flops[s] / 1e9:.1f} GFLOP" for s in STAGES)
            + "; attained rates:"
        )
        padded = tuple(calls["backbone"].args[0].shape[-2:])
        probes, probe_skipped = measure_probes(padded, args.repeats, args.threads, log=log)
        floor = {"flops": flops, "winograd_flops": dense, "probes": probes, "skipped": probe_skipped}
    del recorder

    names = list(args.candidates)
    if args.also_export is not None:
        names += add_twins(args.candidates, args.also_export)
    backends, results, skipped = open_candidates(names, model, calls, log)
    log(f"stages: {args.repeats} interleaved rounds")
    measure_stages(backends, results, calls, args.repeats, args.baseline)
    if args.frames > 0:
        log(f"whole frames: {args.repeats} interleaved runs of {args.frames} frames")
        measure_frames(backends, results, clip, args.window, args.frames, args.repeats, args.baseline)

    report = {
        "settings": {
            "min_dim": args.min_dim,
            "objects": args.objects,
            "window": args.window,
            "repeats": args.repeats,
            "frames": args.frames,
            "baseline": args.baseline,
            "threads": args.threads,
            "history_slots": args.window + 1,
        },
        "machine": {
            "cpu": _cpu_name(),
            "usable_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "versions": _versions(),
        },
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "results": [
            {
                "name": r.name,
                "description": r.description,
                "startup_s": r.startup_s,
                "first_call_ms": r.first_call_ms,
                "shape_compile_s": r.shape_compile_s,
                "rel_err": r.rel_err,
                "stage_ms": {s: {**stats(r.stage_ms[s]), "values_in_order": r.stage_ms[s]} for s in STAGES},
                "stage_ratio": {s: stats(r.stage_ratio[s]) for s in STAGES},
                "stage_cpu_ms": {s: stats(r.stage_cpu_ms[s]) for s in STAGES},
                "stage_cpu_per_wall": r.stage_cpu_per_wall,
                "fps": r.fps,
                "fps_ratio": r.fps_ratio,
                "frame_cpu_per_wall": r.frame_cpu_per_wall,
            }
            for r in results.values()
        ],
        "skipped": skipped,
    }
    if floor is not None:
        report["floor"] = {
            "flops": floor["flops"],
            "winograd_flops": floor["winograd_flops"],
            "probes": [asdict(p) for p in floor["probes"]],
            "skipped": floor["skipped"],
        }
    print(format_report(report))
    if floor is not None:
        from cpu_floor import floor_section

        base = next((r for r in report["results"] if r["name"] == args.baseline), None)
        stage_ms = {st: base["stage_ms"][st]["median"] for st in STAGES} if base else None
        frame_ms = 1e3 / statistics.median(base["fps"]) if base and base["fps"] else None
        print()
        print(
            floor_section(
                floor["flops"],
                floor["probes"],
                floor["skipped"],
                args.baseline,
                stage_ms,
                frame_ms,
                winograd=floor["winograd_flops"],
            )
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
