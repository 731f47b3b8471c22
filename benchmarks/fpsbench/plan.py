"""What a run will do, said before it starts: the systems, the grid, the frames, roughly how long.

The estimate multiplies the frames each system will step by a rough per-frame cost measured once on
a 2-core CPU at min_dim 480, scaled by the pixels processed and the usable cores. It is a guide for
the CPU only (no cost is assumed for a GPU); the progress bar's ETA follows the real pace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fpsbench.backends import BACKENDS, NEEDS_EXPORT
from fpsbench.peers import PeerVariant
from fpsbench.results import Settings
from fpsbench.synthetic import input_size

REFERENCE_PIXELS = 480 * 864  # min_dim 480 (16:9), where the per-frame priors were measured
REFERENCE_CORES = 2
FIXED_SHARE = 0.15
EXPORT_PRIOR_S = 70.0  # the three ONNX graphs, exported once on 2 cores (66 s measured), then cached
STARTUP_PRIOR_S = 6.0  # one hodor-run in a fresh process before its first frame, on 2 cores


@dataclass(frozen=True)
class PlannedSystem:
    name: str
    kind: str  # "engine" or "peer"
    frames: int  # frames it will step over the whole grid, warm-up included
    estimate_s: float | None  # None: no prior for it on this device


@dataclass(frozen=True)
class Plan:
    device: torch.device
    cores: int
    settings: Settings
    systems: list[PlannedSystem]
    skipped: dict[str, str]  # known before building: name -> why it will not run
    export_s: float  # expected one-off export time (0 when cached or not needed)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.systems)

    @property
    def estimate_s(self) -> float | None:
        known = [s.estimate_s for s in self.systems if s.estimate_s is not None]
        return sum(known) + self.export_s if known else None

    def text(self) -> str:
        st = self.settings
        configs = len(st.min_dims) * len(st.objects)
        lines = [
            f"fps.py will measure on {self.device} ({self.cores} usable cores):",
            "  engine: " + (", ".join(s.name for s in self.systems if s.kind == "engine") or "none"),
        ]
        peers = [s.name for s in self.systems if s.kind == "peer"]
        if peers:
            lines.append("  peers: " + ", ".join(peers))
        if self.skipped:
            lines.append("  not here: " + "; ".join(f"{n} ({why})" for n, why in self.skipped.items()))
        lines.append(
            f"  grid: min_dim {', '.join(map(str, st.min_dims))} x objects "
            f"{', '.join(map(str, st.objects))} = {configs} configuration(s); per system and configuration "
            f"{st.warmup} warm-up frames (peers: until their memory is full), {st.repeats} timed runs of "
            f"{st.frames} frames" + (f"; throughput over {st.streams} streams" if st.streams > 1 else "")
            + (
                f"; batches of {', '.join(map(str, st.batch_streams))} videos against as many sessions"
                if st.batch_streams
                else ""
            )
        )
        if st.e2e_frames:
            lines.append(
                f"  end to end: per engine system and min_dim, {st.e2e_repeats} run(s) of hodor-run's path "
                f"on a {st.e2e_frames}-frame clip ({st.e2e_objects} objects), alternated with as many "
                "model-only runs"
                + (
                    f"; hodor-run's start-up in fresh processes on a {st.startup_frames}-frame clip"
                    if st.startup_frames
                    else ""
                )
            )
        estimate = self.estimate_s
        unknown = [s.name for s in self.systems if s.estimate_s is None]
        if estimate is None:
            when = "no estimate for this device"
        else:
            when = f"roughly {_duration(estimate)}"
            if self.export_s:
                when += f" (of which about {_duration(self.export_s)} to export the ONNX graphs once)"
            if unknown:
                when += f", plus {', '.join(unknown)} (no prior cost known)"
        lines.append(f"  {self.frames} frames in all; {when}. The progress bar's ETA follows the real pace.")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _scaled(prior_s: float | None, pixels: int, device: torch.device, cores: int) -> float | None:
    """Part of a frame's cost does not shrink with the frame (layers over objects and history, calls)."""
    if prior_s is None or device.type != "cpu":
        return None
    return (
        prior_s
        * (FIXED_SHARE + (1 - FIXED_SHARE) * pixels / REFERENCE_PIXELS)
        * REFERENCE_CORES
        / max(1, cores)
    )


def make_plan(
    backends: list[str],
    peers: list[PeerVariant],
    peer_unavailable: dict[str, str],
    settings: Settings,
    device: torch.device,
    cores: int,
    export_cached: bool,
) -> Plan:
    st = settings
    systems: list[PlannedSystem] = []
    skipped: dict[str, str] = {}
    per_config = st.warmup + st.repeats * st.frames
    if st.streams > 1:
        per_config += st.streams * (st.warmup + st.throughput_repeats * st.frames)
    for n in st.batch_streams:  # batched, and as many separate sessions
        per_config += 2 * n * (max(1, st.warmup) + st.throughput_repeats * st.frames)
    # End to end: the e2e and model-only runs, alternated, at each min_dim (the progress bar counts
    # these); the start-up runs (their frames, and their loading, outside the bar).
    per_dim_e2e = 2 * st.e2e_repeats * st.e2e_frames if st.e2e_frames else 0
    startups = (1 if st.e2e_repeats <= 1 else 2) if st.e2e_frames and st.startup_frames else 0
    for name in backends:
        spec = BACKENDS[name]
        if spec.needs_cuda and device.type != "cuda":
            skipped[name] = "needs a CUDA GPU"
            continue
        frames, estimate = 0, 0.0
        for d in st.min_dims:
            h, w = input_size(d)
            cost = _scaled(spec.cpu_prior_s, h * w, device, cores)
            frames += per_config * len(st.objects) + per_dim_e2e
            startup_s = startups * (STARTUP_PRIOR_S * REFERENCE_CORES / max(1, cores))
            estimate = (
                None
                if cost is None or estimate is None
                else estimate
                + cost * (per_config * len(st.objects) + per_dim_e2e + startups * st.startup_frames)
                + startup_s
            )
        systems.append(PlannedSystem(name, "engine", frames, estimate))
    for variant in peers:
        if variant.name in peer_unavailable:
            skipped[variant.name] = peer_unavailable[variant.name]
            continue
        per_peer = max(st.warmup, variant.spec.warmup_hint) + st.repeats * st.frames
        frames, estimate = 0, 0.0
        for d in st.min_dims:
            h, w = input_size(d)
            side = variant.build_size(d)
            cost = _scaled(variant.spec.cpu_prior_s, side * side if side else h * w, device, cores)
            frames += per_peer * len(st.objects)
            estimate = (
                None if cost is None or estimate is None else estimate + cost * per_peer * len(st.objects)
            )
        systems.append(PlannedSystem(variant.name, "peer", frames, estimate))
    needs_export = any(s.name in NEEDS_EXPORT for s in systems)
    export_s = 0.0
    if needs_export and not export_cached and device.type == "cpu":
        export_s = EXPORT_PRIOR_S * REFERENCE_CORES / max(1, cores)
    return Plan(device, cores, settings, systems, skipped, export_s)
