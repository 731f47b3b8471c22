"""Every figure the benchmark reports, as typed records; the JSON, the tables and the plot read these.

Each kind of measurement has its own record (its own detail: stage split, stream count, peer
settings). Every kind that times frames of a video also answers :class:`SpeedRow`, the common view
that the side-by-side table, the ratios and the plot are written against, so a new kind (an
end-to-end run of ``hodor-run``'s path, multi-video batches, another peer) is a new record that
answers it, not a change to the formatters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from measurements import Stat, summarize

SCHEMA = "hodor-engine-bench/2"
Status = Literal["measured", "skipped", "failed"]


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory over one block of work (session creation and warm-up), in MiB."""

    host_peak_rss_mib: float | None
    host_peak_increase_mib: float | None
    host_method: str
    gpu_torch_peak_allocated_mib: float | None = None
    gpu_torch_peak_increase_mib: float | None = None
    gpu_device_used_peak_mib: float | None = None
    gpu_device_used_increase_mib: float | None = None


@dataclass(frozen=True)
class LoadAverage:
    before: list[float] | None
    after: list[float] | None


class SpeedRow(Protocol):
    """What every per-frame measurement offers to the side-by-side table and the plot."""

    @property
    def system(self) -> str: ...  # what ran: an engine backend, or a peer with its settings

    @property
    def kind(self) -> str: ...  # "engine", "peer", ...

    @property
    def precision(self) -> str: ...

    @property
    def processing_size(self) -> list[int]: ...  # [height, width] the network sees

    @property
    def warmup_frames(self) -> int: ...

    @property
    def min_dim(self) -> int: ...

    @property
    def objects(self) -> int: ...

    @property
    def fps(self) -> Stat: ...

    @property
    def frame_ms(self) -> Stat: ...

    @property
    def cpu_seconds_per_wall_second(self) -> Stat: ...

    @property
    def host_peak_mib(self) -> float | None: ...

    @property
    def gpu_peak_mib(self) -> float | None: ...


@dataclass(frozen=True)
class StageLatency:
    """Per-frame milliseconds: the whole ``step``, each backend stage, and the rest (``runtime``)."""

    frame: Stat
    backbone: Stat
    encode: Stat
    decode: Stat
    runtime: Stat


@dataclass(frozen=True)
class EngineResult:
    """One engine backend, one (min_dim, objects): the single-stream steady state."""

    backend: str
    precision: str
    min_dim: int
    objects: int
    input_size: list[int]
    padded_size: list[int]
    warmup_frames: int
    history_slots: list[int]  # decode's history length over the timed frames
    fps: Stat
    latency_ms: StageLatency
    stage_calls_per_frame: dict[str, float]
    cpu_seconds_per_wall_second: Stat
    load_average: LoadAverage
    memory: MemoryPeak

    @property
    def system(self) -> str:
        return self.backend

    @property
    def kind(self) -> str:
        return "engine"

    @property
    def processing_size(self) -> list[int]:
        return self.padded_size

    @property
    def frame_ms(self) -> Stat:
        return self.latency_ms.frame

    @property
    def host_peak_mib(self) -> float | None:
        return self.memory.host_peak_rss_mib

    @property
    def gpu_peak_mib(self) -> float | None:
        # Device-wide: ONNX Runtime and TensorRT allocate outside PyTorch's allocator.
        return self.memory.gpu_device_used_peak_mib


@dataclass(frozen=True)
class PeerResult:
    """A peer method (another VOS system) through its own public API, one (min_dim, objects)."""

    system: str  # e.g. "sam2.1-tiny@1024/fp32"
    peer: str  # e.g. "sam2.1-tiny"
    setting: str  # "fp32" or "fast"
    precision: str  # what "setting" means for this peer, e.g. "fp16 autocast", "+ compile" if compiled
    compiled: bool
    min_dim: int
    objects: int
    input_size: list[int]
    processing_size: list[int]  # the size the peer's network sees
    warmup_frames: int
    fps: Stat
    latency_ms: Stat
    cpu_seconds_per_wall_second: Stat
    load_average: LoadAverage
    memory: MemoryPeak

    @property
    def kind(self) -> str:
        return "peer"

    @property
    def frame_ms(self) -> Stat:
        return self.latency_ms

    @property
    def host_peak_mib(self) -> float | None:
        return self.memory.host_peak_rss_mib

    @property
    def gpu_peak_mib(self) -> float | None:
        return self.memory.gpu_torch_peak_allocated_mib


@dataclass(frozen=True)
class StartupRun:
    """One ``hodor-run`` in a fresh process (``startup_probe.py``): seconds from the process's start.

    ``phases_s``: where the start-up went (interpreter, imports, inputs, CUDA initialisation,
    model); ``startup_s``: to the first frame entering the pipeline; ``first_mask_s``: to the first
    frame written; ``fps``: its frames after the start-up."""

    phases_s: dict[str, float]
    startup_s: float
    first_mask_s: float | None
    frames: int
    fps: float


@dataclass(frozen=True)
class StartupResult:
    """``hodor-run``'s start-up with this backend: run twice in fresh processes, the second with
    warm caches (page cache, compiled kernels); or why it could not be measured."""

    status: Status
    command: list[str]
    first: StartupRun | None = None
    warm: StartupRun | None = None
    reason: str | None = None


@dataclass(frozen=True)
class EndToEndResult:
    """``hodor-run``'s own path on a generated H.264 clip (decode, model, masks and overlay written)
    beside the model alone on the same frames, one backend at one min_dim.

    ``fps``: end to end, per run (opening the clip to the output committed; the model loaded
    before). ``model_only_fps``: ``VideoSession.run_device`` over the same frames, decoded and
    (on CUDA) uploaded beforehand, the backbone chunked as in ``hodor-run``, results left on the
    device. ``ratio``: end-to-end over model-only FPS, run by run (the two alternate).
    ``stage_share``: the backend's three stages' time over the run's wall time (``stage_method``
    says how it was timed). ``first_mask_s``: from the pipeline's start to the first frame
    written."""

    backend: str
    precision: str
    min_dim: int
    objects: int
    frames: int
    chunk: int
    input_size: list[int]
    padded_size: list[int]
    overlay: bool
    fps: Stat
    model_only_fps: Stat
    ratio: Stat
    stage_share: Stat
    stage_method: str
    first_mask_s: Stat
    cpu_seconds_per_wall_second: Stat
    peak_frames_in_flight: int
    load_average: LoadAverage
    memory: MemoryPeak
    startup: StartupResult | None = None

    @property
    def system(self) -> str:
        return f"{self.backend} end-to-end"

    @property
    def kind(self) -> str:
        return "end-to-end"

    @property
    def processing_size(self) -> list[int]:
        return self.padded_size

    @property
    def warmup_frames(self) -> int:
        return 0

    @property
    def frame_ms(self) -> Stat:
        return summarize([1e3 / v for v in self.fps.values if v > 0])

    @property
    def host_peak_mib(self) -> float | None:
        return self.memory.host_peak_rss_mib

    @property
    def gpu_peak_mib(self) -> float | None:
        return self.memory.gpu_device_used_peak_mib


@dataclass(frozen=True)
class EndToEndOutcome:
    """The end-to-end runs (absent with ``--e2e-frames 0``) and, by backend, why one failed."""

    clip: str
    results: list[EndToEndResult]
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ThroughputResult:
    backend: str
    min_dim: int
    objects: int
    streams: int
    method: str
    batched: bool
    fps_total: Stat
    latency_ms: Stat


@dataclass(frozen=True)
class BatchThroughputResult:
    """``streams`` videos in one ``BatchSession`` (one stage call per step for all of them), against
    the same videos in separate sessions, their timed runs interleaved.

    ``fps_total``: frames of all videos per second. ``video_latency_ms``: per step, the time until
    every video's mask of that step is on the host (a video's frame latency). ``memory``: peak over
    creating the batch and its warm-up. ``separate_*``: the same videos, each in its own session
    (``separate_method`` says how they share the device). ``fps_ratio``: batched over separate FPS,
    per pair of interleaved runs.
    """

    backend: str
    min_dim: int
    objects: int
    streams: int
    warmup_steps: int
    fps_total: Stat
    video_latency_ms: Stat
    memory: MemoryPeak
    separate_method: str
    separate_fps_total: Stat
    separate_latency_ms: Stat
    fps_ratio: Stat


@dataclass(frozen=True)
class Ratio:
    """FPS of ``backend`` over FPS of ``reference``, from the per-run ratios of interleaved runs."""

    backend: str
    reference: str
    min_dim: int
    objects: int
    fps_ratio: Stat
    fps_ratio_of_medians: float


@dataclass(frozen=True)
class VideoDecodeCost:
    codec: str
    reader: str
    ms_per_frame: Stat


@dataclass(frozen=True)
class MaskWriteCost:
    writer: str
    ms_per_frame: Stat


@dataclass(frozen=True)
class IoResult:
    """Per-frame cost of reading the input video and writing the output masks (no model)."""

    min_dim: int
    input_size: list[int]
    frames: int
    video_decode: VideoDecodeCost | None = None
    mask_write: MaskWriteCost | None = None
    failed: str | None = None


@dataclass(frozen=True)
class SystemStatus:
    """Whether an engine backend or a peer variant was measured; if not, why (never a figure)."""

    name: str
    description: str
    status: Status
    reason: str | None = None
    setup_s: float | None = None
    cpu_threads: int | None = None


@dataclass(frozen=True)
class OfficialResult:
    min_dim: int
    objects: int
    frames: int
    padded_size: list[int]
    fps: Stat
    clip_ms_cuda_events: Stat
    memory: dict[str, float | None]


@dataclass(frozen=True)
class OfficialOutcome:
    """The public repository's ``InferenceModel``, timed by ``official_baseline.py`` in a subprocess."""

    status: Status
    reason: str | None = None
    stderr_tail: list[str] | None = None
    what: str | None = None
    checkout: str | None = None
    device: str | None = None
    torch: str | None = None
    window: int | None = None
    repeats: int | None = None
    weights: str | None = None
    results: list[OfficialResult] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OfficialOutcome:
        results = [
            OfficialResult(
                **{
                    **r,
                    "fps": Stat(**r["fps"]),
                    "clip_ms_cuda_events": Stat(**r["clip_ms_cuda_events"]),
                }
            )
            for r in data.get("results", [])
        ]
        known = {f.name for f in dataclasses.fields(cls)} - {"results", "status"}
        return cls(status="measured", results=results, **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class PeersOutcome:
    """Peers measured in the same run as the engine's backends (absent unless ``--peers``)."""

    weights: str
    api: dict[str, str]  # peer -> the public entry point that was timed
    variants: list[SystemStatus]
    results: list[PeerResult]
    ratios: list[Ratio]  # engine backend / peer variant, per (min_dim, objects)


@dataclass(frozen=True)
class CudaDevice:
    name: str
    capability: str
    memory_gib: float
    multiprocessors: int
    cuda_runtime: str | None
    cudnn: int | None


@dataclass(frozen=True)
class Machine:
    hostname_hash: str
    platform: str
    python: str
    cpu_model: str
    cpu_flags: list[str]
    cpu_count: int | None
    cpus_usable: int | None
    load_average_at_start: list[float] | None
    memory_total_gib: float | None
    torch: str
    torch_threads: int
    versions: dict[str, str | None]  # optional packages: onnxruntime, tensorrt, peers' packages ...
    hodor_engine: str
    git_commit: str | None
    device: str
    cuda: CudaDevice | None

    @property
    def where(self) -> str:
        """One line naming the hardware."""
        if self.cuda is not None:
            return f"{self.cuda.name} (CUDA {self.cuda.cuda_runtime})"
        return f"{self.cpu_model}, {self.cpus_usable} usable cores, {self.memory_total_gib} GiB"


@dataclass(frozen=True)
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
    batch_streams: list[int] = field(default_factory=list)  # videos per BatchSession; empty: none
    e2e_frames: int = 0  # 0: no end-to-end runs
    e2e_repeats: int = 0
    e2e_objects: int = 0
    startup_frames: int = 0  # 0: no start-up runs


@dataclass(frozen=True)
class RunDescription:
    """The settings plus what they mean, as written into the JSON."""

    device: str
    config: str
    model: dict[str, Any]
    weights: str
    input: str
    timing: str
    stage_split: str


@dataclass
class Report:
    command: str
    date: str
    quick: bool
    machine: Machine
    settings: Settings
    run: RunDescription
    backends: list[SystemStatus]
    setup_s: dict[str, float]
    results: list[EngineResult]
    throughput: list[ThroughputResult]
    ratios: list[Ratio]  # engine backend / the reference backend (torch), and / onnxruntime
    io: list[IoResult]
    official: OfficialOutcome | None
    peers: PeersOutcome | None
    files: dict[str, str | None]
    batched: list[BatchThroughputResult] = field(default_factory=list)
    elapsed_s: float | None = None
    end_to_end: EndToEndOutcome | None = None
    schema: str = SCHEMA

    def rows(self) -> list[SpeedRow]:
        """Every per-frame measurement of every kind, engine first, in the order they were made."""
        rows: list[SpeedRow] = list(self.results)
        if self.peers is not None:
            rows += self.peers.results
        if self.end_to_end is not None:
            rows += self.end_to_end.results
        return rows

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # The settings and their meaning side by side under one key, as readers expect.
        data["settings"] = {**data["settings"], **data.pop("run")}
        return data
