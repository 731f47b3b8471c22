#!/usr/bin/env python
"""Frames per second and per-stage latency of every backend, side by side, in one process.

    python benchmarks/fps.py                  # the full grid: min_dim 480, 720; 1, 2, 4, 8 objects
    python benchmarks/fps.py --quick          # small; about a minute on 2 CPU cores
    python benchmarks/fps.py --backends torch onnxruntime --min-dims 480 --objects 1 2 4 8 --out bench-out
    python benchmarks/fps.py --official ~/src/HODOR   # also the public repository's InferenceModel (CUDA)

What is measured, per backend, processing size (``min_dim``) and object count:

* the single-stream steady state: one ``VideoSession`` is warmed up (by default for ``window + 1``
  frames, so the descriptor ring is full and every code path has run), then ``--repeats`` runs of
  ``--frames`` consecutive frames are timed. Repeats of the different backends are interleaved, so a
  burst of load from elsewhere on the machine hits all of them alike and the ratios stay fair.
  FPS is reported per run (median, spread); per-stage latency per frame: ``backbone``, ``encode``,
  ``decode`` (timed at the backend seam) and ``runtime`` (everything else in ``step``: pre-processing,
  resampling, softmax, override, arg-max, the descriptor ring);
* throughput over ``--streams`` concurrent videos (see ``throughput`` in the JSON for how);
* peak host memory (resident set) and, on CUDA, peak GPU memory, per configuration;
* video decode and mask writing, per frame, apart from the model (they depend on the input size only).

Weights are random (a fixed seed): speed does not depend on weight values. Frames are synthetic.
CUDA timings use CUDA events; CPU timings ``time.perf_counter``. Results go to ``OUT/fps.json``
(every figure and the machine description), ``OUT/fps_vs_objects.png`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # Run as a script from a checkout without an installed copy.
    sys.path.insert(0, str(REPO_ROOT))

from measurements import summarize  # noqa: E402  (beside this script)

import hodor  # noqa: E402
from hodor.config import HodorConfig, load_config, parse_config, with_dims  # noqa: E402
from hodor.errors import HodorError  # noqa: E402

SCHEMA = "hodor-engine-bench/1"
ALL_BACKENDS = ("torch", "torch-triton-fp16", "torch-triton-bf16", "onnxruntime", "tensorrt")
REFERENCE_BACKEND = "torch"
STAGES = ("backbone", "encode", "decode")
WEIGHT_SEED = 0
# Export limits for the benchmark's own ONNX/TensorRT exports: enough for the grid, small enough
# that the graphs' dynamic ranges stay modest.
EXPORT_MAX_OBJECTS = 8
EXPORT_MAX_WINDOW = 16
EXPORT_MIN_SIZE = 64
EXPORT_MAX_SIZE = 1280  # the long side of a 16:9 frame at min_dim 720


class Unavailable(Exception):
    """A backend that cannot run on this machine; the message says why (it is reported, not faked)."""


# --------------------------------------------------------------------------------------------------
# Statistics




# --------------------------------------------------------------------------------------------------
# Clocks: CUDA events on a GPU (they time the device, not the launches), perf_counter on the CPU.


class Clock:
    """Marks points in time and turns pairs of marks into milliseconds once the work is done."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.current_stream().synchronize()

    def ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1e3


class StageTimedBackend:
    """Wraps a backend: times each stage call, passes everything else through untouched.

    Timing at the seam means every backend is split the same way without instrumenting its inside.
    ``config`` replaces the backend's: the session takes the processing size (``min_dim``) from it,
    so one built backend serves every size of the grid.
    """

    def __init__(self, inner: Any, clock: Clock, config: HodorConfig) -> None:
        self._inner = inner
        self._clock = clock
        self.config = config
        self._marks: list[tuple[str, Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = self._clock.mark()
        out = fn(*args)
        self._marks.append((stage, start, self._clock.mark()))
        return out

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._timed("backbone", self._inner.backbone, images)

    def encode(
        self, f8: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._timed("encode", self._inner.encode, f8, fg, bg)

    def decode(self, *args: torch.Tensor) -> torch.Tensor:
        return self._timed("decode", self._inner.decode, *args)

    def take(self) -> list[tuple[str, Any, Any]]:
        marks, self._marks = self._marks, []
        return marks


# --------------------------------------------------------------------------------------------------
# Memory


def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_mib() -> float | None:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


class PeakMemory:
    """Peak host resident set (and, on CUDA, GPU memory) over a block of work.

    Host: Linux's high-water mark, reset on entry through ``/proc/self/clear_refs``; where that
    cannot be written, a 5 ms sampler of the resident set. GPU: PyTorch's allocator peak (torch
    backends) and the device-wide used memory sampled every 5 ms (backends with their own
    allocators, such as ONNX Runtime or TensorRT, are seen only there).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.result: dict[str, Any] = {}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._host_samples: list[float] = []
        self._gpu_used_peak = 0
        self._use_hwm = False

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            if not self._use_hwm:
                rss = _rss_mib()
                if rss is not None:
                    self._host_samples.append(rss)
            if self.cuda:
                free, total = torch.cuda.mem_get_info()
                self._gpu_used_peak = max(self._gpu_used_peak, total - free)

    def __enter__(self) -> PeakMemory:
        self._host_base = _rss_mib()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._use_hwm = _proc_status_kib("VmHWM") is not None
        except OSError:
            self._use_hwm = False
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            self._gpu_base = total - free
            self._gpu_used_peak = self._gpu_base
            self._torch_base = torch.cuda.memory_allocated()
        if self.cuda or not self._use_hwm:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if self._use_hwm:
            hwm = _proc_status_kib("VmHWM")
            peak = None if hwm is None else hwm / 1024.0
            method = "VmHWM after clear_refs"
        elif self._host_samples:
            peak, method = max(self._host_samples), "VmRSS sampled every 5 ms"
        else:
            peak, method = None, "unavailable on this platform"
        self.result = {
            "host_peak_rss_mib": peak,
            "host_peak_increase_mib": None
            if peak is None or self._host_base is None
            else max(0.0, peak - self._host_base),
            "host_method": method,
            "gpu_torch_peak_allocated_mib": None,
            "gpu_torch_peak_increase_mib": None,
            "gpu_device_used_peak_mib": None,
            "gpu_device_used_increase_mib": None,
        }
        if self.cuda:
            peak_alloc = torch.cuda.max_memory_allocated()
            self.result.update(
                gpu_torch_peak_allocated_mib=peak_alloc / 2**20,
                gpu_torch_peak_increase_mib=(peak_alloc - self._torch_base) / 2**20,
                gpu_device_used_peak_mib=self._gpu_used_peak / 2**20,
                gpu_device_used_increase_mib=(self._gpu_used_peak - self._gpu_base) / 2**20,
            )


# --------------------------------------------------------------------------------------------------
# Machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "fma")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception:
        return None


def describe_machine(device: torch.device) -> dict[str, Any]:
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    desc: dict[str, Any] = {
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_gib": None if mem_kib is None else round(mem_kib / 2**20, 2),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "triton": _version("triton"),
        "tensorrt": _version("tensorrt"),
        "hodor_engine": hodor.__version__,
        "git_commit": commit or None,
        "device": str(device),
        "cuda": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        desc["cuda"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 2),
            "multiprocessors": props.multi_processor_count,
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return desc


# --------------------------------------------------------------------------------------------------
# Synthetic input


def input_size(min_dim: int) -> tuple[int, int]:
    """A 16:9 frame whose short side is already ``min_dim`` (height, width).

    The pipeline resizes every input to ``min_dim``; feeding that size keeps the model's cost the one
    of ``min_dim`` and leaves the resize itself nearly free, as for a video recorded at that size.
    """
    # Even width: 4:2:0 video needs it (854x480, 1280x720, as real recordings are).
    return min_dim, 2 * int(round(min_dim * 8 / 9))


class SyntheticVideo:
    """Deterministic RGB frames (smooth gradients with moving discs) and a reference id mask.

    A few distinct frames are cycled: the values do not change the cost, and memory stays small.
    """

    DISTINCT = 8

    def __init__(self, height: int, width: int, num_objects: int, seed: int = 0) -> None:
        self.height, self.width, self.num_objects = height, width, num_objects
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._frames = []
        for t in range(self.DISTINCT):
            base = np.stack(
                [
                    127 + 100 * np.sin(xx / 37.0 + t / 3.0),
                    127 + 100 * np.cos(yy / 23.0 - t / 5.0),
                    127 + 60 * np.sin((xx + yy) / 51.0 + t),
                ],
                axis=-1,
            )
            base += rng.normal(0, 8, size=base.shape).astype(np.float32)
            self._frames.append(np.clip(base, 0, 255).astype(np.uint8))
        self.reference = self._reference_mask()

    def _reference_mask(self) -> np.ndarray:
        """Object ``k`` (ids 1..I) as a disc on a grid of cells, large enough at 1/8 to survive."""
        h, w, n = self.height, self.width, self.num_objects
        cols = math.ceil(math.sqrt(n * w / h))
        rows = math.ceil(n / cols)
        ids = np.zeros((h, w), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        for k in range(n):
            r, c = divmod(k, cols)
            cy, cx = (r + 0.5) * h / rows, (c + 0.5) * w / cols
            radius = 0.35 * min(h / rows, w / cols)
            ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k + 1
        return ids

    def frame(self, t: int) -> np.ndarray:
        return self._frames[t % self.DISTINCT]


# --------------------------------------------------------------------------------------------------
# The engine's pieces, found at run time (they may be missing from a partial install: then a
# backend is reported as skipped with the import error, never faked).


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{what}: cannot import {module} ({exc})") from None


@dataclass
class BenchContext:
    device: torch.device
    config: HodorConfig
    cache_dir: Path
    window: int
    log: Callable[[str], None]
    max_objects: int = 1
    max_padded_side: int = 32
    threads: int | None = None  # CPU threads per backend; None: each backend's own default
    _checkpoint: Path | None = None
    _model: Any = None
    setup_s: dict[str, float] = field(default_factory=dict)

    def cache_key(self, *extra: Any) -> str:
        payload = json.dumps(
            [self.config.model.__dict__, WEIGHT_SEED, hodor.__version__, torch.__version__, *extra],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def model(self) -> Any:
        """One ``HodorNet`` with random weights (fixed seed) on the CPU, shared by every backend."""
        if self._model is None:
            mod = _import("hodor.model", "the PyTorch model")
            torch.manual_seed(WEIGHT_SEED)
            self._model = mod.HodorNet(self.config.model).eval()
        return self._model

    def checkpoint(self) -> Path:
        """The random weights as an official-format checkpoint (``model.pth`` + ``config.yaml``), cached."""
        if self._checkpoint is None:
            out = self.cache_dir / f"weights-{self.cache_key(_source_digest('hodor.model'))}"
            ckpt = out / "model.pth"
            if not ckpt.is_file():
                out.mkdir(parents=True, exist_ok=True)
                tmp = out / "model.pth.tmp"
                torch.save({"model": self.model().state_dict()}, tmp)
                (out / "config.yaml").write_text(_config_yaml(self.config))
                tmp.replace(ckpt)
                _prune_cache(self.cache_dir, "weights-")
            self._checkpoint = ckpt
        return self._checkpoint


def _config_yaml(cfg: HodorConfig) -> str:
    """The config in the official ``config.yaml`` layout (so the export reads what the model used)."""
    import yaml

    i, m = cfg.input, cfg.model
    raw = {
        "INPUT": {
            "IMAGE_MEAN": list(i.mean_bgr),
            "IMAGE_STD": list(i.std_bgr),
            "MIN_DIM": i.min_dim,
            "MAX_DIM": i.max_dim,
            "RGB_INPUT": i.rgb_input,
            "NORMALIZE_TO_UNIT_SCALE": i.normalize_to_unit_scale,
        },
        "MODEL": {
            "TRANSFORMER_PRE_NORMALIZE": m.pre_normalize,
            "ENCODER_LAYERS": m.encoder_layers,
            "DECODER_LAYERS": m.decoder_layers,
            "NUM_ATTN_HEADS": m.num_heads,
            "NUM_BG_DESCRIPTORS": m.num_bg_descriptors,
            "NUM_CATCH_ALL_QUERIES": m.num_catch_all_queries,
            "POS_ENCODINGS_IN_FMQ": m.pos_encodings_in_encoder,
            "POS_ENCODINGS_IN_FQM": m.pos_encodings_in_decoder,
        },
    }
    return yaml.safe_dump(raw, sort_keys=False)


@dataclass
class BackendSpec:
    name: str
    description: str
    build: Callable[[BenchContext], Any]


def _build_torch(ctx: BenchContext) -> Any:
    mod = _import("hodor.engine.backends.torch_backend", "torch backend")
    # The real loading path (strict keys from an official-format checkpoint), as hodor-run does it.
    # The eager reference: plain PyTorch operators, no fused kernels, no CUDA graphs.
    return mod.open_torch_backend(
        ctx.checkpoint(), ctx.config, ctx.device.type, kernels="torch", dtype="fp32", cuda_graphs=False
    )


def _build_torch_triton(dtype: torch.dtype) -> Callable[[BenchContext], Any]:
    def build(ctx: BenchContext) -> Any:
        if ctx.device.type != "cuda":
            raise Unavailable("needs a CUDA GPU (Triton kernels and CUDA graphs run on CUDA only)")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise Unavailable(f"{torch.cuda.get_device_name()} does not support bfloat16")
        _import("triton", "Triton kernels")
        mod = _import("hodor.engine.backends.torch_backend", "torch backend")
        return mod.open_torch_backend(
            ctx.checkpoint(), ctx.config, ctx.device.type, dtype=dtype, kernels="triton", cuda_graphs=True
        )

    return build


def _export_dir(ctx: BenchContext, precision: str, tensorrt: bool) -> Path:
    """An export of the benchmark's random weights through ``hodor-export``'s own code, cached by
    config, weights, versions and export arguments (exporting takes longer than a quick run)."""
    cli = _import("hodor.export.cli", "hodor-export")
    argv = [
        "--precision",
        precision,
        "--max-objects",
        str(max(EXPORT_MAX_OBJECTS, ctx.max_objects)),
        "--max-window",
        str(max(EXPORT_MAX_WINDOW, ctx.window)),
        "--min-size",
        str(EXPORT_MIN_SIZE),
        "--max-size",
        str(max(EXPORT_MAX_SIZE, ctx.max_padded_side)),
        "--tensorrt",
        "on" if tensorrt else "off",
    ]
    versions = [_version(m) for m in ("onnx", "onnxscript", "onnxruntime", "tensorrt")]
    if tensorrt:
        versions.append(torch.cuda.get_device_name())
    key = ctx.cache_key("export", argv, versions, _source_digest("hodor.model", "hodor.export"))
    out = ctx.cache_dir / f"export-{key}.hodor"
    if (out / "manifest.json").is_file():
        ctx.log(f"  cached export: {out}")
        return out
    ckpt = ctx.checkpoint()
    ctx.log(f"  exporting ({' '.join(argv)}) into {out}; cached for later runs")
    start = time.perf_counter()
    args = cli.build_parser().parse_args([str(ckpt), "--out", str(out), *argv])
    cli.run_export(args, say=lambda line: ctx.log("    " + line))
    _prune_cache(ctx.cache_dir, "export-")
    ctx.setup_s[f"export_{precision}{'_tensorrt' if tensorrt else ''}"] = time.perf_counter() - start
    return out


def _prune_cache(cache_dir: Path, prefix: str, keep: int = 2) -> None:
    """Remove all but the ``keep`` most recently written entries named ``prefix*``: each is about
    160 MB, and a change to the model or exporter sources makes a new one."""
    entries = sorted(cache_dir.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _source_digest(*packages: str) -> str:
    """A digest of the packages' Python sources: an export made by other code is not reused."""
    h = hashlib.sha256()
    for package in packages:
        root = Path(importlib.import_module(package).__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _build_onnxruntime(ctx: BenchContext) -> Any:
    _import("onnxruntime", "ONNX Runtime")
    mod = _import("hodor.engine.backends.onnxruntime_backend", "ONNX Runtime backend")
    export_dir = _export_dir(ctx, "fp32", tensorrt=False)
    if ctx.threads is not None:
        return mod.OnnxRuntimeBackend(export_dir, device=ctx.device.type, threads=ctx.threads)
    return mod.open_onnxruntime_backend(export_dir, ctx.device.type)


def _build_tensorrt(ctx: BenchContext) -> Any:
    if ctx.device.type != "cuda":
        raise Unavailable("needs a CUDA GPU (TensorRT engines run on NVIDIA GPUs only)")
    mod = _import("hodor.engine.backends.tensorrt_backend", "TensorRT backend")
    flavours = mod.installed_flavours() if hasattr(mod, "installed_flavours") else []
    if not flavours:
        raise Unavailable("no TensorRT installed: pip install hodor-engine[tensorrt]")
    return mod.open_tensorrt_backend(_export_dir(ctx, "fp16", tensorrt=True), "cuda")


BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", "PyTorch eager, fp32 (the reference)", _build_torch),
    "torch-triton-fp16": BackendSpec(
        "torch-triton-fp16",
        "PyTorch + Triton kernels + CUDA graphs, fp16",
        _build_torch_triton(torch.float16),
    ),
    "torch-triton-bf16": BackendSpec(
        "torch-triton-bf16",
        "PyTorch + Triton kernels + CUDA graphs, bf16",
        _build_torch_triton(torch.bfloat16),
    ),
    "onnxruntime": BackendSpec("onnxruntime", "ONNX Runtime, fp32 graphs", _build_onnxruntime),
    "tensorrt": BackendSpec("tensorrt", "TensorRT engines", _build_tensorrt),
}


def make_session(backend: StageTimedBackend, ctx: BenchContext) -> Any:
    mod = _import("hodor.engine.loop.session", "VideoSession")
    return mod.VideoSession(backend, temporal_window=ctx.window)


# --------------------------------------------------------------------------------------------------
# Measuring one backend


@dataclass
class FrameTimes:
    frame_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    # Process CPU seconds per wall second of each run: about the thread count on an idle machine,
    # lower when other processes take the cores (the figures then say so themselves).
    cpu_per_wall: list[float] = field(default_factory=list)


class Runner:
    """One backend's video session at one configuration: warm-up, then timed runs of frames."""

    def __init__(
        self, backend: Any, session: Any, timed: StageTimedBackend, video: SyntheticVideo, clock: Clock
    ) -> None:
        self.backend, self.session, self.timed, self.video, self.clock = backend, session, timed, video, clock
        self.t = 0
        self.timed_frames: list[int] = []  # indices of the frames that were timed

    def _step(self) -> None:
        mask = self.video.reference if self.t == 0 else None
        self.session.step(self.video.frame(self.t), mask)
        self.t += 1

    def warm_up(self, frames: int) -> None:
        for _ in range(max(1, frames)):
            self._step()
        self.clock.sync()
        self.timed.take()

    def run(self, frames: int, times: FrameTimes) -> float:
        """Steps ``frames`` frames; returns the wall time in seconds and adds per-frame figures."""
        marks = []
        self.clock.sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(frames):
            self.timed_frames.append(self.t)
            start = self.clock.mark()
            self._step()
            marks.append((start, self.clock.mark(), self.timed.take()))
        self.clock.sync()
        wall = time.perf_counter() - wall0
        times.cpu_per_wall.append((time.process_time() - cpu0) / wall)
        for start, end, stage_marks in marks:
            times.frame_ms.append(self.clock.ms(start, end))
            per = dict.fromkeys(STAGES, 0.0)
            for stage, s0, s1 in stage_marks:
                per[stage] += self.clock.ms(s0, s1)
                times.calls[stage] += 1
            for stage in STAGES:
                times.stage_ms[stage].append(per[stage])
        return wall


@dataclass
class Settings:
    min_dims: list[int]
    objects: list[int]
    window: int
    warmup: int
    frames: int
    repeats: int
    streams: int
    throughput_repeats: int
    io_frames: int


def measure_config(
    ctx: BenchContext,
    built: dict[str, Any],
    min_dim: int,
    objects: int,
    settings: Settings,
    failures: dict[str, str],
) -> list[dict[str, Any]]:
    """All available backends at one (min_dim, objects): interleaved single-stream runs, memory."""
    cfg = with_dims(ctx.config, min_dim, None)
    h, w = input_size(min_dim)
    video = SyntheticVideo(h, w, objects)
    clock = Clock(ctx.device)
    runners: dict[str, Runner] = {}
    memory: dict[str, dict[str, Any]] = {}
    for name, backend in built.items():
        if name in failures:
            continue
        timed = StageTimedBackend(backend, clock, cfg)
        try:
            with PeakMemory(ctx.device) as peak:
                session = make_session(timed, ctx)
                runner = Runner(backend, session, timed, video, clock)
                runner.warm_up(settings.warmup)
        except HodorError as exc:
            ctx.log(f"  {name}: {exc}")
            failures[name] = f"min_dim {min_dim}, {objects} objects: {exc}"
            continue
        memory[name] = peak.result
        runners[name] = runner

    times = {name: FrameTimes() for name in runners}
    load_before = _loadavg()
    fps_runs: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(settings.repeats):
        # Interleaved: a burst of load from elsewhere hits every backend alike.
        for name, runner in runners.items():
            wall = runner.run(settings.frames, times[name])
            fps_runs[name].append(settings.frames / wall)

    results = []
    for name, runner in runners.items():
        ft = times[name]
        frames_total = len(ft.frame_ms)
        per_frame_stage = {s: summarize(ft.stage_ms[s]) for s in STAGES}
        runtime = [f - sum(ft.stage_ms[s][i] for s in STAGES) for i, f in enumerate(ft.frame_ms)]
        results.append(
            {
                "backend": name,
                "min_dim": min_dim,
                "objects": objects,
                "input_size": [h, w],
                "padded_size": _padded_size(cfg, h, w),
                # Decode's history length over the timed frames: constant once the ring is full.
                "history_slots": sorted({min(t, settings.window) + 1 for t in runner.timed_frames}),
                "fps": summarize(fps_runs[name]),
                "latency_ms": {
                    "frame": summarize(ft.frame_ms),
                    **per_frame_stage,
                    "runtime": summarize(runtime),
                },
                "stage_calls_per_frame": {s: ft.calls[s] / max(1, frames_total) for s in STAGES},
                "cpu_seconds_per_wall_second": summarize(ft.cpu_per_wall),
                "load_average": {"before": load_before, "after": _loadavg()},
                "memory": memory[name],
            }
        )
    return results


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _padded_size(cfg: HodorConfig, h: int, w: int) -> list[int]:
    """The network's input size for an ``h x w`` frame (the official resize rule, then /32 padding)."""
    s = cfg.input.min_dim / min(h, w)
    if max(h, w) * s > cfg.input.max_dim:
        s = cfg.input.max_dim / max(h, w)
    rh, rw = round(s * h), round(s * w)
    return [int(math.ceil(rh / 32) * 32), int(math.ceil(rw / 32) * 32)]


def _stream_worker(
    stream: torch.cuda.Stream,
    barrier: threading.Barrier,
    runner: Runner,
    frames: int,
    times: FrameTimes,
    errors: list[BaseException],
) -> None:
    try:
        with torch.cuda.stream(stream):
            barrier.wait()
            runner.run(frames, times)
    except BaseException as exc:  # re-raised on the main thread
        errors.append(exc)


def measure_throughput(
    ctx: BenchContext, name: str, backend: Any, min_dim: int, objects: int, settings: Settings
) -> dict[str, Any]:
    """``settings.streams`` videos at once, each in its own session.

    CUDA: one host thread and one CUDA stream per video, so kernels of different videos may overlap.
    CPU: the videos are stepped round-robin on one thread. The CPU backends already spread one
    frame's operators over all cores, so threads would only oversubscribe them; what this measures
    there is the cost of keeping several sessions' state alive and interleaving them.
    """
    n = settings.streams
    cfg = with_dims(ctx.config, min_dim, None)
    h, w = input_size(min_dim)
    video = SyntheticVideo(h, w, objects)
    cuda = ctx.device.type == "cuda"
    streams = [torch.cuda.Stream() for _ in range(n)] if cuda else [None] * n
    runners = []
    for stream in streams:
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            clock = Clock(ctx.device)
            timed = StageTimedBackend(backend, clock, cfg)
            runner = Runner(backend, make_session(timed, ctx), timed, video, clock)
            runner.warm_up(settings.warmup)
            runners.append(runner)

    fps_runs: list[float] = []
    latency: list[float] = []
    for _ in range(settings.throughput_repeats):
        per_stream = [FrameTimes() for _ in range(n)]
        if cuda:
            torch.cuda.synchronize()
            barrier = threading.Barrier(n)
            errors: list[BaseException] = []
            threads = [
                threading.Thread(
                    target=_stream_worker,
                    args=(streams[i], barrier, runners[i], settings.frames, per_stream[i], errors),
                )
                for i in range(n)
            ]
            wall0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            torch.cuda.synchronize()
            wall = time.perf_counter() - wall0
            if errors:
                raise errors[0]
        else:
            wall0 = time.perf_counter()
            for _ in range(settings.frames):
                for i, runner in enumerate(runners):
                    runner.run(1, per_stream[i])
            wall = time.perf_counter() - wall0
        fps_runs.append(n * settings.frames / wall)
        for ft in per_stream:
            latency.extend(ft.frame_ms)
    return {
        "backend": name,
        "min_dim": min_dim,
        "objects": objects,
        "streams": n,
        "method": "one thread and CUDA stream per video" if cuda else "round-robin on one thread (CPU)",
        "batched": False,
        "fps_total": summarize(fps_runs),
        "latency_ms": summarize(latency),
    }


# --------------------------------------------------------------------------------------------------
# Video decode and mask writing (independent of the backend)


def _encode_synthetic_video(path: Path, video: SyntheticVideo, frames: int) -> str:
    import av

    with av.open(str(path), "w") as out:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(video.frame(t), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return codec


def _engine_io() -> Any | None:
    """The engine's own video/mask I/O (``hodor.engine.io``), or ``None`` where it is absent."""
    try:
        return importlib.import_module("hodor.engine.io")
    except ImportError:
        return None


def _pyav_frames(path: Path) -> Iterator[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _pil_mask_writer(path: Path, ids: np.ndarray, palette: list[int]) -> None:
    from PIL import Image

    img = Image.fromarray(ids, mode="P")
    img.putpalette(palette)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)


def measure_io(min_dim: int, settings: Settings, workdir: Path) -> dict[str, Any]:
    """Per-frame cost of decoding the input video and of writing the output masks."""
    h, w = input_size(min_dim)
    video = SyntheticVideo(h, w, 4)
    engine_io = _engine_io()
    out: dict[str, Any] = {"min_dim": min_dim, "input_size": [h, w], "frames": settings.io_frames}
    try:
        import av  # noqa: F401
    except ImportError as exc:
        out["video_decode"] = {"skipped": f"PyAV not installed ({exc})"}
    else:
        path = workdir / f"synthetic-{h}x{w}.mp4"
        codec = _encode_synthetic_video(path, video, settings.io_frames)
        runs = []
        for _ in range(max(3, settings.repeats)):
            t0 = time.perf_counter()
            frames = engine_io.open_frames(path) if engine_io else _pyav_frames(path)
            n = sum(1 for _ in frames)
            runs.append((time.perf_counter() - t0) * 1e3 / max(1, n))
        out["video_decode"] = {
            "codec": codec,
            "reader": "hodor.engine.io.open_frames" if engine_io else "PyAV decode to rgb24",
            "ms_per_frame": summarize(runs),
        }
    palette = engine_io.default_palette() if engine_io else list(range(256)) * 3
    write = engine_io.write_mask if engine_io else _pil_mask_writer
    mask_dir = workdir / "masks"
    mask_dir.mkdir(exist_ok=True)
    runs = []
    for _ in range(max(3, settings.repeats)):
        t0 = time.perf_counter()
        for t in range(settings.io_frames):
            write(mask_dir / f"{t:05d}.png", video.reference, palette)
        runs.append((time.perf_counter() - t0) * 1e3 / settings.io_frames)
    out["mask_write"] = {
        "writer": "hodor.engine.io.write_mask" if engine_io else "PIL palette PNG, atomic rename",
        "ms_per_frame": summarize(runs),
    }
    return out


# --------------------------------------------------------------------------------------------------
# The official repository's InferenceModel (a subprocess: its package is also named ``hodor``)


def run_official(
    checkout: Path, ctx: BenchContext, settings: Settings, workdir: Path, official_config: Path | None
) -> dict[str, Any]:
    if ctx.device.type != "cuda":
        return {
            "status": "skipped",
            "reason": "--official needs a CUDA GPU: the public HODOR code calls .cuda() throughout; "
            "run this benchmark on a machine with an NVIDIA GPU",
        }
    if not (checkout / "hodor" / "inference" / "inference_model.py").is_file():
        return {
            "status": "skipped",
            "reason": f"{checkout} is not a checkout of the public HODOR repository "
            "(no hodor/inference/inference_model.py)",
        }
    inputs = workdir / "official-inputs.npz"
    arrays: dict[str, np.ndarray] = {}
    for min_dim in settings.min_dims:
        h, w = input_size(min_dim)
        frames = settings.warmup + settings.frames
        for objects in settings.objects:
            video = SyntheticVideo(h, w, objects)
            arrays[f"ref_{min_dim}_{objects}"] = video.reference
        # The frames do not depend on the object count: stored once per size.
        arrays[f"frames_{min_dim}"] = np.stack([video.frame(t) for t in range(frames)])
    np.savez(inputs, **arrays)
    result_path = workdir / "official-result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parent / "official_baseline.py"),
        "--checkout",
        str(checkout),
        "--inputs",
        str(inputs),
        "--out",
        str(result_path),
        "--window",
        str(settings.window),
        "--repeats",
        str(settings.repeats),
        "--min-dims",
        *map(str, settings.min_dims),
        "--objects",
        *map(str, settings.objects),
    ]
    if official_config is not None:
        cmd += ["--config", str(official_config)]
    ctx.log("official: " + " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, env=env, cwd=str(workdir), text=True, capture_output=True)
    if proc.returncode != 0 or not result_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"status": "failed", "reason": f"exit status {proc.returncode}", "stderr_tail": tail}
    out = json.loads(result_path.read_text())
    out["status"] = "measured"
    return out


# --------------------------------------------------------------------------------------------------
# Reporting


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _spread(s: dict[str, Any], digits: int = 2) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def format_table(report: dict[str, Any]) -> str:
    lines = []
    gpu = report["machine"]["cuda"] is not None
    head = (
        f"{'backend':<18} {'min_dim':>7} {'obj':>3}  {'FPS median [min-max]':<22} "
        f"{'frame':>8} {'backbone':>8} {'encode':>7} {'decode':>7} {'runtime':>7}  "
        f"{'host MiB':>8}" + (f" {'GPU MiB':>8}" if gpu else "") + f"  {'tput FPS (streams)':<20}"
    )
    lines += ["per frame, milliseconds (medians); FPS over runs of consecutive frames", head, "-" * len(head)]
    tput = {(t["backend"], t["min_dim"], t["objects"]): t for t in report["throughput"]}
    for r in report["results"]:
        lat = r["latency_ms"]
        mem = r["memory"]
        t = tput.get((r["backend"], r["min_dim"], r["objects"]))
        tcell = "-" if t is None else f"{_f(t['fps_total']['median'], 2)} ({t['streams']})"
        lines.append(
            f"{r['backend']:<18} {r['min_dim']:>7} {r['objects']:>3}  {_spread(r['fps']):<22} "
            f"{_f(lat['frame']['median']):>8} {_f(lat['backbone']['median']):>8} "
            f"{_f(lat['encode']['median']):>7} {_f(lat['decode']['median']):>7} "
            f"{_f(lat['runtime']['median']):>7}  {_f(mem['host_peak_rss_mib'], 0):>8}"
            + (f" {_f(mem['gpu_device_used_peak_mib'], 0):>8}" if gpu else "")
            + f"  {tcell:<20}"
        )
    if report["ratios"]:
        lines += ["", "FPS ratio against the reference (median of per-run ratios of interleaved runs)"]
        for q in report["ratios"]:
            lines.append(
                f"  {q['backend']:<18} / {q['reference']:<6} min_dim {q['min_dim']:>4}, {q['objects']} obj: "
                f"{_spread(q['fps_ratio'])}"
            )
    if report["io"]:
        lines += ["", "I/O, ms per frame (median [min-max])"]
        for io in report["io"]:
            if "failed" in io:
                lines.append(f"  input {io['input_size'][0]}x{io['input_size'][1]}: failed: {io['failed']}")
                continue
            dec = io.get("video_decode", {})
            dec_s = dec.get("skipped") or _spread(dec.get("ms_per_frame", {}))
            lines.append(
                f"  input {io['input_size'][0]}x{io['input_size'][1]}: video decode {dec_s}; "
                f"mask write {_spread(io['mask_write']['ms_per_frame'])}"
            )
    off = report.get("official")
    if off:
        lines += ["", f"official InferenceModel: {off['status']}"]
        if off["status"] == "measured":
            for r in off["results"]:
                lines.append(f"  min_dim {r['min_dim']:>4}, {r['objects']} obj: FPS {_spread(r['fps'])}")
        else:
            lines.append(f"  {off.get('reason', '')}")
    skipped = [b for b in report["backends"] if b["status"] != "measured"]
    if skipped:
        lines += ["", "skipped:"]
        lines += [f"  {b['name']}: {b['reason']}" for b in skipped]
    return "\n".join(lines)


def _md_stat(s: dict[str, Any] | None, digits: int = 2) -> str:
    if not s or s.get("median") is None:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f} (1 run)"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def format_markdown(report: dict[str, Any]) -> str:
    """The tables of RESULTS.md, from the report (so figures are pasted, never retyped)."""
    m = report["machine"]
    gpu = m["cuda"] is not None
    st = report["settings"]
    device = (
        f"{m['cuda']['name']} (CUDA {m['cuda']['cuda_runtime']})"
        if gpu
        else f"{m['cpu_model']}, {m['cpus_usable']} usable cores, {m['memory_total_gib']} GiB"
    )
    lines = [
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; commit {m['git_commit'] or 'unknown'}",
        f"- device: {device}; torch {m['torch']} ({m['torch_threads']} threads), "
        f"onnxruntime {m['onnxruntime']}",
        f"- settings: window {st['window']}, warm-up {st['warmup']} frames, {st['repeats']} runs of "
        f"{st['frames']} frames per configuration; "
        + (
            f"throughput over {st['streams']} streams ({st['throughput_repeats']} run); "
            if st["streams"] > 1
            else "no throughput runs (--streams 0); "
        )
        + f"weights {st['weights']}",
        f"- load average (1, 5, 15 min) at the start: {m['load_average_at_start']}",
        "",
        "FPS: median (min-max) over runs. Stage latencies: median ms per frame. Host MiB: peak resident "
        "set of the whole process. CPU/wall: process CPU seconds per wall second (the thread count on "
        "an idle machine).",
        "",
        "| backend | min_dim | objects | history slots | FPS | frame ms | backbone | encode | decode | "
        "runtime | host MiB | " + ("GPU MiB | " if gpu else "") + "CPU/wall | throughput FPS |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | "
        + ("---: | " if gpu else "")
        + "---: | --- |",
    ]
    tput = {(t["backend"], t["min_dim"], t["objects"]): t for t in report["throughput"]}
    for r in report["results"]:
        lat, mem = r["latency_ms"], r["memory"]
        t = tput.get((r["backend"], r["min_dim"], r["objects"]))
        tcell = "-" if t is None else f"{_md_stat(t['fps_total'])} ({t['streams']} streams)"
        slots = (
            "-".join(str(x) for x in (r["history_slots"][0], r["history_slots"][-1]))
            if len(r["history_slots"]) > 1
            else str(r["history_slots"][0])
        )
        lines.append(
            f"| {r['backend']} | {r['min_dim']} | {r['objects']} | {slots} | {_md_stat(r['fps'])} | "
            f"{_f(lat['frame']['median'])} | {_f(lat['backbone']['median'])} | "
            f"{_f(lat['encode']['median'])} | "
            f"{_f(lat['decode']['median'])} | {_f(lat['runtime']['median'])} | "
            f"{_f(mem['host_peak_rss_mib'], 0)} | "
            + (f"{_f(mem['gpu_device_used_peak_mib'], 0)} | " if gpu else "")
            + f"{_f(r['cpu_seconds_per_wall_second']['median'], 2)} | {tcell} |"
        )
    if report["ratios"]:
        lines += [
            "",
            "| backend / reference | min_dim | objects | FPS ratio, median (min-max) of per-run ratios |",
            "| --- | ---: | ---: | --- |",
        ]
        for q in report["ratios"]:
            lines.append(
                f"| {q['backend']} / {q['reference']} | {q['min_dim']} | {q['objects']} | "
                f"{_md_stat(q['fps_ratio'])} |"
            )
    if report["io"]:
        lines += ["", "| input | video decode ms/frame | mask write ms/frame |", "| --- | --- | --- |"]
        for io in report["io"]:
            if "failed" in io:
                lines.append(f"| {io['input_size'][1]}x{io['input_size'][0]} | failed: {io['failed']} | |")
                continue
            dec = io.get("video_decode", {})
            lines.append(
                f"| {io['input_size'][1]}x{io['input_size'][0]} | "
                f"{dec.get('skipped') or _md_stat(dec.get('ms_per_frame'))} | "
                f"{_md_stat(io['mask_write']['ms_per_frame'])} |"
            )
    skipped = [b for b in report["backends"] if b["status"] != "measured"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{b['name']}`: {b['reason']}" for b in skipped) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = report["settings"]["min_dims"]
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4.2), squeeze=False)
    series: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        series.setdefault(r["backend"], []).append(r)
    off = report.get("official") or {}
    if off.get("status") == "measured":
        series["official"] = off["results"]
    for ax, dim in zip(axes[0], dims, strict=True):
        for name, rows in series.items():
            pts = sorted((r["objects"], r["fps"]) for r in rows if r["min_dim"] == dim)
            if not pts:
                continue
            x = [p[0] for p in pts]
            med = [p[1]["median"] for p in pts]
            err = [
                [m - p[1]["min"] for m, p in zip(med, pts, strict=True)],
                [p[1]["max"] - m for m, p in zip(med, pts, strict=True)],
            ]
            ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["settings"]["objects"], [str(o) for o in report["settings"]["objects"]])
        ax.set_xlabel("objects")
        ax.set_ylabel("frames per second")
        ax.set_ylim(bottom=0)
        ax.set_title(f"min_dim {dim}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    m = report["machine"]
    where = m["cuda"]["name"] if m["cuda"] else f"{m['cpu_model']}, {m['cpus_usable']} cores"
    fig.suptitle(f"HODOR, random weights, window {report['settings']['window']} ({where})", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FPS and per-stage latency of every backend, side by side "
        "(random weights, synthetic frames).",
    )
    p.add_argument("--quick", action="store_true", help="a small setting: about a minute on 2 CPU cores")
    p.add_argument("--backends", nargs="+", choices=ALL_BACKENDS, help="default: all")
    p.add_argument("--objects", nargs="+", type=int, help="object counts (default 1 2 4 8)")
    p.add_argument("--min-dims", nargs="+", type=int, help="processing sizes (default 480 720)")
    p.add_argument("--window", type=int, default=7, help="temporal window (default 7)")
    p.add_argument("--warmup", type=int, help="untimed frames per session (default window + 1)")
    p.add_argument("--frames", type=int, help="frames per timed run (default 10)")
    p.add_argument("--repeats", type=int, help="timed runs per configuration (default 5)")
    p.add_argument("--streams", type=int, help="concurrent videos for throughput; 0 skips it (default 2)")
    p.add_argument("--throughput-repeats", type=int, help="timed runs for throughput (default: --repeats)")
    p.add_argument("--io-frames", type=int, help="frames for the decode / mask-writing figures (default 30)")
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
    args = p.parse_args(argv)
    quick = args.quick
    args.objects = args.objects or ([1, 2] if quick else [1, 2, 4, 8])
    args.min_dims = args.min_dims or ([128] if quick else [480, 720])
    # --quick: a short warm-up, so the descriptor ring is not yet full (history_slots in the JSON
    # says how long it was); fine for a smoke run, not for figures to quote.
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else args.window + 1)
    args.frames = args.frames or (2 if quick else 10)
    args.repeats = args.repeats or (3 if quick else 5)
    args.streams = args.streams if args.streams is not None else 2
    args.throughput_repeats = args.throughput_repeats or (1 if quick else args.repeats)
    args.io_frames = args.io_frames or (8 if quick else 30)
    if (
        min(args.objects) < 1
        or min(args.min_dims) < 32
        or args.window < 0
        or args.frames < 1
        or (args.threads is not None and args.threads < 1)
    ):
        p.error("objects >= 1, min-dims >= 32, window >= 0, frames >= 1 and threads >= 1 are required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("error: --device cuda, but PyTorch sees no CUDA GPU", file=sys.stderr)
            return 2

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    try:
        base_cfg = load_config(args.config) if args.config else parse_config({})
    except HodorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        min_dims=sorted(set(args.min_dims)),
        objects=sorted(set(args.objects)),
        window=args.window,
        warmup=args.warmup,
        frames=args.frames,
        repeats=args.repeats,
        streams=args.streams,
        throughput_repeats=args.throughput_repeats,
        io_frames=args.io_frames,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(
        device=device,
        config=base_cfg,
        cache_dir=args.cache_dir,
        window=args.window,
        log=log,
        max_objects=max(settings.objects),
        threads=args.threads,
        max_padded_side=max(
            max(_padded_size(with_dims(base_cfg, d, None), *input_size(d))) for d in settings.min_dims
        ),
    )

    # Build every requested backend once; a failure is a reason, listed, never a fake number.
    wanted = args.backends or list(ALL_BACKENDS)
    built: dict[str, Any] = {}
    status: dict[str, dict[str, Any]] = {}
    for name in wanted:
        spec = BACKENDS[name]
        log(f"setting up {name} ({spec.description}) on {device}")
        t0 = time.perf_counter()
        try:
            built[name] = spec.build(ctx)
            threads = getattr(built[name], "threads", None)
            if name.startswith("torch"):
                threads = torch.get_num_threads()
            status[name] = {
                "name": name,
                "description": spec.description,
                "status": "measured",
                "setup_s": time.perf_counter() - t0,
                "cpu_threads": threads,
            }
        except (Unavailable, HodorError) as exc:
            status[name] = {
                "name": name,
                "description": spec.description,
                "status": "skipped",
                "reason": str(exc),
            }
            log(f"  skipped: {exc}")

    machine = describe_machine(device)  # before the work: its load average is the one at the start
    # I/O first and guarded: a codec problem must neither cost the model figures nor go unseen.
    io = []
    with tempfile.TemporaryDirectory(prefix="hodor-bench-io-") as tmp:
        for d in settings.min_dims:
            try:
                io.append(measure_io(d, settings, Path(tmp)))
            except Exception as exc:
                log(f"I/O measurement at min_dim {d} failed: {exc!r}")
                io.append({"min_dim": d, "input_size": list(input_size(d)), "failed": repr(exc)})

    failures: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    with torch.no_grad():
        for min_dim in settings.min_dims:
            for objects in settings.objects:
                log(f"min_dim {min_dim}, {objects} object(s): {', '.join(built) or 'no backend'}")
                results += measure_config(ctx, built, min_dim, objects, settings, failures)
                if settings.streams > 1:
                    log(f"  single stream done; throughput over {settings.streams} streams")
                    for name, backend in built.items():
                        if name not in failures:
                            throughput.append(
                                measure_throughput(ctx, name, backend, min_dim, objects, settings)
                            )
    for name, reason in failures.items():
        status[name].update(status="failed", reason=reason)

    ratios = []
    by_key = {(r["backend"], r["min_dim"], r["objects"]): r for r in results}
    for r in results:
        ref = by_key.get((REFERENCE_BACKEND, r["min_dim"], r["objects"]))
        if ref is None or r["backend"] == REFERENCE_BACKEND:
            continue
        # Runs were interleaved, so run i of both saw the same moment of the machine.
        paired = [a / b for a, b in zip(r["fps"]["values"], ref["fps"]["values"], strict=False)]
        ratios.append(
            {
                "backend": r["backend"],
                "reference": REFERENCE_BACKEND,
                "min_dim": r["min_dim"],
                "objects": r["objects"],
                "fps_ratio": summarize(paired),
                "fps_ratio_of_medians": r["fps"]["median"] / ref["fps"]["median"],
            }
        )

    with tempfile.TemporaryDirectory(prefix="hodor-bench-") as tmp:
        official = None
        if args.official is not None:
            official = run_official(
                args.official.expanduser().resolve(), ctx, settings, Path(tmp), args.official_config
            )
            if official["status"] != "measured":
                log(f"official: {official['status']}: {official.get('reason')}")

    report = {
        "schema": SCHEMA,
        "command": " ".join([Path(sys.executable).name, *sys.argv])
        if argv is None
        else "fps.py " + " ".join(argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "settings": {
            **settings.__dict__,
            "device": str(device),
            "config": str(args.config) if args.config else "official defaults",
            "model": base_cfg.model.__dict__,
            "weights": f"random (torch.manual_seed({WEIGHT_SEED})): speed does not depend on weight values",
            "input": "synthetic 16:9 RGB frames whose short side is min_dim; reference mask at frame 0",
            "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter",
            "stage_split": "backbone/encode/decode timed at the backend seam; runtime = frame - stages",
        },
        "backends": [status[n] for n in wanted],
        "setup_s": ctx.setup_s,
        "results": results,
        "throughput": throughput,
        "ratios": ratios,
        "io": io,
        "official": official,
        "files": {"json": "fps.json", "plot": "fps_vs_objects.png", "markdown": "fps.md"},
        "elapsed_s": None,
    }
    try:
        plot(report, args.out / "fps_vs_objects.png")
    except Exception:
        # The figures matter more than the picture: keep the JSON and say what went wrong.
        log("plot failed:\n" + traceback.format_exc())
        report["files"]["plot"] = None
    report["elapsed_s"] = time.perf_counter() - started
    _write_json(args.out / "fps.json", report)
    md = args.out / "fps.md"
    md.with_suffix(".tmp").write_text(format_markdown(report))
    md.with_suffix(".tmp").replace(md)
    print(format_table(report))
    print(
        f"\nwrote {args.out / 'fps.json'} and {args.out / 'fps_vs_objects.png'} "
        f"in {report['elapsed_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
