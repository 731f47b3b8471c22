"""The measurement over the grid of (min_dim, objects): every engine backend and peer variant at each
configuration, their single-stream runs interleaved, then the engine's multi-stream throughput
(separate sessions) and its batches of sessions."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fpsbench.backends import BACKENDS, HOST_REFERENCE_BACKEND, REFERENCE_BACKEND
from fpsbench.batched import measure_batched
from fpsbench.machine import load_average
from fpsbench.memory import PeakMemory
from fpsbench.peers import PeerPool, PeerVariant
from fpsbench.peers.base import PeerSession, PeerStepper
from fpsbench.results import (
    BatchThroughputResult,
    EngineResult,
    LoadAverage,
    MemoryPeak,
    PeerResult,
    Ratio,
    Settings,
    ThroughputResult,
)
from fpsbench.single_stream import EngineStepper, engine_result, paired_ratio
from fpsbench.synthetic import SyntheticVideo
from fpsbench.systems import FrameStepper, OnFrame, Unavailable
from fpsbench.throughput import measure_throughput
from fpsbench.timing import Clock, FrameTimes, StageTimedBackend
from hodor.config import HodorConfig, with_dims
from hodor.engine.loop.preprocess import frame_geometry
from hodor.errors import HodorError
from measurements import summarize


@dataclass
class GridOutcome:
    results: list[EngineResult] = field(default_factory=list)
    peer_results: list[PeerResult] = field(default_factory=list)
    throughput: list[ThroughputResult] = field(default_factory=list)
    batched: list[BatchThroughputResult] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    peer_ratios: list[Ratio] = field(default_factory=list)
    # name -> (status, reason) for systems that stopped being measured part-way
    dropped: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Contender:
    """One system prepared at one configuration: warmed up, ready for timed runs."""

    name: str
    stepper: FrameStepper
    memory: MemoryPeak
    times: FrameTimes = field(default_factory=FrameTimes)
    peer: PeerVariant | None = None
    session: PeerSession | None = None
    warmup: int = 0
    processing_size: tuple[int, int] = (0, 0)


class Grid:
    def __init__(
        self,
        settings: Settings,
        device: torch.device,
        config: HodorConfig,
        backends: dict[str, Any],
        peers: PeerPool | None,
        on_frame: OnFrame,
        say: Callable[[str], None],
        describe: Callable[[str], None],
        precisions: Mapping[str, str] | None = None,
    ) -> None:
        """``backends``: name -> built engine backend; ``precisions``: name -> its compute precision
        (default: from the registry)."""
        self.st, self.device, self.config = settings, device, config
        self.backends, self.peers = backends, peers
        self.precisions = precisions or {name: BACKENDS[name].precision for name in backends}
        self.on_frame, self.say, self.describe = on_frame, say, describe
        self.out = GridOutcome()

    def run(self) -> GridOutcome:
        with torch.no_grad(), tempfile.TemporaryDirectory(prefix="hodor-bench-peers-") as workdir:
            for min_dim in self.st.min_dims:
                for objects in self.st.objects:
                    self._configuration(min_dim, objects, workdir)
        return self.out

    def _drop(self, name: str, status: str, reason: str) -> None:
        self.say(f"  {name}: {status}: {reason}")
        self.out.dropped.setdefault(name, (status, reason))

    def _engine(self, min_dim: int, objects: int, cfg: HodorConfig, video: SyntheticVideo) -> list[Contender]:
        contenders = []
        for name, backend in self.backends.items():
            if name in self.out.dropped:
                continue
            self.describe(f"min_dim {min_dim}, {objects} obj: warm-up {name}")
            clock = Clock(self.device)
            try:
                with PeakMemory(self.device) as peak:
                    stepper = EngineStepper(
                        StageTimedBackend(backend, clock, cfg), self.st.window, video, clock, self.on_frame
                    )
                    stepper.warm_up(self.st.warmup)
            except HodorError as exc:
                self._drop(name, "failed", f"min_dim {min_dim}, {objects} objects: {exc}")
                continue
            assert peak.result is not None
            contenders.append(Contender(name, stepper, peak.result, warmup=self.st.warmup))
        return contenders

    def _peers(self, min_dim: int, objects: int, video: SyntheticVideo, workdir: str) -> list[Contender]:
        if self.peers is None:
            return []
        contenders = []
        for variant in self.peers.variants:
            if variant.name in self.out.dropped:
                continue
            self.describe(f"min_dim {min_dim}, {objects} obj: warm-up {variant.name}")
            session = None
            try:
                model = self.peers.model(variant, min_dim)  # built once, outside the memory window
                warmup = max(self.st.warmup, model.steady_after)
                with PeakMemory(self.device) as peak:
                    session = model.open_session(video, warmup + self.st.repeats * self.st.frames, workdir)
                    stepper = PeerStepper(session, Clock(self.device), self.on_frame)
                    stepper.warm_up(warmup)
            except Unavailable as exc:
                self._drop(variant.name, "skipped", str(exc))
                continue
            except Exception as exc:  # a peer's own failure on this machine: reported, never filled in
                self._drop(variant.name, "failed", f"min_dim {min_dim}, {objects} objects: {exc!r}")
                if session is not None:
                    session.close()
                continue
            assert peak.result is not None
            contenders.append(
                Contender(
                    variant.name,
                    stepper,
                    peak.result,
                    peer=variant,
                    session=session,
                    warmup=warmup,
                    processing_size=model.processing_size(video),
                )
            )
        return contenders

    def _timed_runs(self, contenders: list[Contender]) -> list[Contender]:
        """Run i of every system before run i+1 of any; a peer failing here is dropped whole."""
        alive = list(contenders)
        for _ in range(self.st.repeats):
            for c in list(alive):
                self.describe(f"timed run: {c.name}")
                try:
                    c.stepper.run(self.st.frames, c.times)
                except Exception as exc:
                    if c.peer is None:
                        raise
                    self._drop(c.name, "failed", f"during timed runs: {exc!r}")
                    alive.remove(c)
        return alive

    def _configuration(self, min_dim: int, objects: int, workdir: str) -> None:
        cfg = with_dims(self.config, min_dim, None)
        video = SyntheticVideo.at(min_dim, objects)
        geometry = frame_geometry(video.height, video.width, cfg.input.min_dim, cfg.input.max_dim)
        contenders = self._engine(min_dim, objects, cfg, video) + self._peers(
            min_dim, objects, video, workdir
        )
        before = load_average()
        measured = self._timed_runs(contenders)
        load = LoadAverage(before, load_average())
        for c in measured:
            if c.peer is None:
                assert isinstance(c.stepper, EngineStepper)
                self.out.results.append(
                    engine_result(
                        c.name,
                        self.precisions[c.name],
                        c.stepper,
                        c.times,
                        geometry,
                        min_dim,
                        objects,
                        self.st.window,
                        c.warmup,
                        c.memory,
                        load,
                    )
                )
            else:
                self.out.peer_results.append(self._peer_result(c, video, min_dim, objects, load))
        for c in contenders:
            if c.session is not None:
                c.session.close()
        self._ratios(measured, min_dim, objects)
        if self.st.streams > 1:
            for name, backend in self.backends.items():
                if name in self.out.dropped:
                    continue
                self.describe(f"min_dim {min_dim}, {objects} obj: {self.st.streams} streams on {name}")
                self.out.throughput.append(
                    measure_throughput(
                        name,
                        backend,
                        cfg,
                        self.device,
                        video,
                        self.st.streams,
                        self.st.window,
                        self.st.warmup,
                        self.st.frames,
                        self.st.throughput_repeats,
                        self.on_frame,
                    )
                )
        self._batched(cfg, video, min_dim, objects)

    def _batched(self, cfg: HodorConfig, video: SyntheticVideo, min_dim: int, objects: int) -> None:
        for name, backend in self.backends.items():
            for streams in self.st.batch_streams:
                if name in self.out.dropped:
                    break
                self.describe(f"min_dim {min_dim}, {objects} obj: {streams} videos batched on {name}")
                try:
                    self.out.batched.append(
                        measure_batched(
                            name,
                            backend,
                            cfg,
                            self.device,
                            video,
                            streams,
                            self.st.window,
                            self.st.warmup,
                            self.st.frames,
                            self.st.throughput_repeats,
                            self.on_frame,
                        )
                    )
                except HodorError as exc:  # an export's --max-streams, say: reported, not faked
                    self.say(f"  {name}: {streams} videos batched: {exc}")

    def _peer_result(
        self, c: Contender, video: SyntheticVideo, min_dim: int, objects: int, load: LoadAverage
    ) -> PeerResult:
        assert c.peer is not None and self.peers is not None
        setting = self.peers.setting(c.peer)
        return PeerResult(
            system=c.name,
            peer=c.peer.spec.name,
            setting=setting.name,
            precision=setting.precision + (" + torch.compile" if setting.compiled else ""),
            compiled=setting.compiled,
            min_dim=min_dim,
            objects=objects,
            input_size=[video.height, video.width],
            processing_size=list(c.processing_size),
            warmup_frames=c.warmup,
            fps=summarize(c.times.fps),
            latency_ms=summarize(c.times.frame_ms),
            cpu_seconds_per_wall_second=summarize(c.times.cpu_per_wall),
            load_average=load,
            memory=c.memory,
        )

    def _ratios(self, measured: list[Contender], min_dim: int, objects: int) -> None:
        """Per-run ratios (run order, not sorted values): engine / reference, engine / ONNX Runtime (the
        CPU's fp32 export backend, which the other export and bf16 backends are judged against),
        engine / each peer."""
        engine = [c for c in measured if c.peer is None]
        peers = [c for c in measured if c.peer is not None]
        ref = next((c for c in engine if c.name == REFERENCE_BACKEND), None)
        host = next((c for c in engine if c.name == HOST_REFERENCE_BACKEND), None)
        for c in engine:
            if ref is not None and c is not ref:
                self.out.ratios.append(
                    paired_ratio(c.name, c.times.fps, ref.name, ref.times.fps, min_dim, objects)
                )
            if host is not None and c not in (ref, host):
                self.out.ratios.append(
                    paired_ratio(c.name, c.times.fps, host.name, host.times.fps, min_dim, objects)
                )
            for p in peers:
                self.out.peer_ratios.append(
                    paired_ratio(c.name, c.times.fps, p.name, p.times.fps, min_dim, objects)
                )
