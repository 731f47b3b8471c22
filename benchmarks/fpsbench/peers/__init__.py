"""Peers: other video object segmentation methods, measured in the same run as the engine.

Optional: their packages (``rf-cutie``, ``sam2``) are the ``peers`` extra and are imported only
here, never by ``hodor``. A peer whose package is missing, or that fails on this machine, is
reported as skipped or failed with the reason; no figure is ever filled in for it.

A new peer is one :class:`PeerSpec` in :data:`PEERS` and an adapter module beside ``cutie.py`` and
``sam2.py`` implementing :class:`~fpsbench.peers.base.PeerModel`.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fpsbench.peers.base import SETTINGS, PeerModel, PeerSetting
from fpsbench.systems import Unavailable

PEER_WEIGHT_SEED = 0
WEIGHTS_NOTE = (
    "random (torch.manual_seed(0)), each network built from its own package's shipped config; "
    "nothing downloaded: speed does not depend on weight values"
)
FP32 = PeerSetting("fp32", "fp32", None, compiled=False)


@dataclass(frozen=True)
class PeerSpec:
    name: str
    module: str  # the import package that must be present
    distribution: str  # what pip installs
    api: str  # the public entry point that is timed
    build: Callable[[PeerSetting, torch.device, int], PeerModel]  # (setting, device, image size)
    fast: Callable[[torch.device], PeerSetting]
    native_size: int | None = None  # a fixed processing size its users run at, measured as well
    build_size: Callable[[int], int] | None = None  # min_dim -> the size the network is built for
    warmup_hint: int = 0  # frames until its memory is full, for the up-front plan (counted exactly later)
    cpu_prior_s: float | None = None  # rough seconds per frame at 480p on 2 CPU cores

    def missing(self) -> str | None:
        """Why the package cannot be used here, or ``None``."""
        try:
            found = importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"{self.module} is not installed (pip install {self.distribution})"


# Rough seconds per frame at 480p on 2 CPU cores, for the up-front estimate only: each peer's
# per-frame time relative to the torch backend's in one interleaved CPU run (RESULTS.md), times the
# torch backend's prior. Peers without one are said to have no known cost.
CPU_PRIORS_S = {"cutie-base": 1.0, "sam2.1-tiny": 1.1, "sam2.1-base+": 1.8}


def _cutie(model: str) -> PeerSpec:
    from fpsbench.peers import cutie

    return PeerSpec(
        name=f"cutie-{model}",
        module="cutie.inference.inference_core",
        distribution="rf-cutie",
        api="cutie.inference.inference_core.InferenceCore.step",
        build=lambda setting, device, _size: cutie.CutieModel(model, setting, device, PEER_WEIGHT_SEED),
        fast=cutie.fast_setting,
        cpu_prior_s=CPU_PRIORS_S.get(f"cutie-{model}"),
        warmup_hint=26,  # mem_every 5 x max_mem_frames 5 + 1
    )


def _sam2(size: str) -> PeerSpec:
    from fpsbench.peers import sam2

    return PeerSpec(
        name=f"sam2.1-{size}",
        module="sam2.sam2_video_predictor",
        distribution="sam2",
        api="sam2.sam2_video_predictor.SAM2VideoPredictor.propagate_in_video",
        build=lambda setting, device, image_size: sam2.Sam2Model(
            size, image_size, setting, device, PEER_WEIGHT_SEED
        ),
        fast=sam2.fast_setting,
        native_size=sam2.NATIVE_SIZE,
        build_size=sam2.grid_image_size,
        cpu_prior_s=CPU_PRIORS_S.get(f"sam2.1-{size}"),
        warmup_hint=17,  # max(num_maskmem 7, max_obj_ptrs_in_encoder 16) + 1
    )


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        _cutie("base"),
        _cutie("small"),
        _sam2("tiny"),
        _sam2("small"),
        _sam2("base+"),
        _sam2("large"),
    )
}
DEFAULT_PEERS = ("cutie-base", "sam2.1-tiny", "sam2.1-base+")


@dataclass(frozen=True)
class PeerVariant:
    """One peer at one setting and size rule: what a row of the tables is."""

    spec: PeerSpec
    setting: str  # "fp32" or "fast"
    native: bool  # at the peer's fixed native size instead of the grid's min_dim

    @property
    def name(self) -> str:
        at = f"@{self.spec.native_size}" if self.native else ""
        return f"{self.spec.name}{at}/{self.setting}"

    def build_size(self, min_dim: int) -> int:
        """The size the network is built for at ``min_dim`` (0: it takes any frame size)."""
        if self.native and self.spec.native_size is not None:
            return self.spec.native_size
        return self.spec.build_size(min_dim) if self.spec.build_size else 0


def plan_variants(names: list[str], settings: list[str], native: bool) -> list[PeerVariant]:
    variants = []
    for name in names:
        spec = PEERS[name]
        for setting in settings:
            variants.append(PeerVariant(spec, setting, native=False))
            if native and spec.native_size is not None:
                variants.append(PeerVariant(spec, setting, native=True))
    return variants


class PeerPool:
    """Builds each variant's network on first use (once per processing size) and keeps its status."""

    def __init__(self, variants: list[PeerVariant], device: torch.device) -> None:
        self.variants = variants
        self.device = device
        self._models: dict[tuple[str, int], PeerModel] = {}
        self.build_s: dict[str, float] = {}  # variant -> seconds spent building its networks
        self.descriptions: dict[str, str] = {}  # variant -> what was built, from which package and config

    def setting(self, variant: PeerVariant) -> PeerSetting:
        return FP32 if variant.setting == "fp32" else variant.spec.fast(self.device)

    def check(self, variant: PeerVariant) -> None:
        """Raise :class:`Unavailable` early when the package is missing or the setting cannot run."""
        reason = variant.spec.missing()
        if reason:
            raise Unavailable(reason)
        self.setting(variant)

    def model(self, variant: PeerVariant, min_dim: int) -> PeerModel:
        key = (variant.name, variant.build_size(min_dim))
        if key not in self._models:
            start = time.perf_counter()
            self._models[key] = variant.spec.build(self.setting(variant), self.device, key[1])
            self.build_s[variant.name] = self.build_s.get(variant.name, 0.0) + time.perf_counter() - start
            self.descriptions[variant.name] = self._models[key].description
        return self._models[key]


__all__ = ["DEFAULT_PEERS", "PEERS", "SETTINGS", "PeerPool", "PeerSpec", "PeerVariant", "plan_variants"]
