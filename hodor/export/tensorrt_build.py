"""ONNX stage graphs -> TensorRT engines, one per stage, reused while nothing they depend on changed.

One thin adapter over both flavours (see ``hodor.engine.backends.tensorrt.flavours``):

- ``rtx`` (TensorRT for RTX) builds ahead of time for explicit compute capabilities and
  needs no GPU, so exports (and CI) build engines on CPU-only machines.
- ``tensorrt`` builds for the GPU it runs on, which must be present.

Both parse the ONNX graphs with TensorRT's own parser into strongly typed networks:
precision comes from the graph's types (TensorRT 11 removed the fp16 builder flags), so
an fp16 engine is built from the fp16 graph. No timing cache is attached: on a CPU-only
machine it would make the builder query a GPU.

Engines are written as ``DIR/<stage>.<precision>.engine``; the record returned by
``build_engines`` goes into ``manifest.json`` under ``tensorrt``. An engine is reused only
when flavour, version, targets, precision, the ONNX graph's sha256, the optimisation
profile and the engine file itself all match the previous record; otherwise it is rebuilt
and the reason is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hodor.engine.backends.manifest import (
    MANIFEST_NAME,
    STAGES,
    EngineEntry,
    GraphEntry,
    Manifest,
    TensorRTRecord,
    sha256_file,
    verify_graph,
)
from hodor.engine.backends.tensorrt.flavours import (
    FLAVOUR_LABELS,
    FLAVOUR_MODULES,
    INSTALL_HINT,
    CapturingLogger,
    Flavour,
    load_flavour,
)
from hodor.engine.backends.tensorrt.validity import GpuInfo, check_engine_header
from hodor.engine.io.files import atomic_write
from hodor.errors import HodorError

TENSORRT_MODES = ("auto", "on", "off")
FLAVOUR_CHOICES = tuple(FLAVOUR_MODULES)

ProgressFn = Callable[[str], None]


def engine_filename(stage: str, precision: str) -> str:
    """``encoder.fp16.engine``: precision in the name so fp32 and fp16 engines can sit side by side."""
    return f"{stage}.{precision}.engine"


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- flavour choice


def _has_builder(name: str) -> bool:
    """Whether flavour ``name`` imports with a builder (a lean runtime install has none)."""
    try:
        return hasattr(load_flavour(name).module, "Builder")
    except HodorError:
        return False


def resolve_flavour(flavour: str | None, mode: str) -> Flavour | None:
    """The flavour that builds this export's engines, or ``None`` to build none.

    ``mode`` is ``--tensorrt``: ``off`` builds nothing; ``on`` must build (``HodorError``
    saying how to install a flavour otherwise); ``auto`` builds when it can. With no
    ``flavour`` given, TensorRT is preferred on a machine with a GPU (its engines are tuned
    for that GPU), TensorRT for RTX otherwise (it needs none). Call it before the ONNX
    export so that ``--tensorrt on`` fails at once rather than after minutes of export.
    """
    if mode not in TENSORRT_MODES:
        raise HodorError(f"unknown --tensorrt mode {mode!r}: choose one of {', '.join(TENSORRT_MODES)}")
    if mode == "off":
        return None
    if flavour is not None:
        if flavour not in FLAVOUR_MODULES:
            raise HodorError(f"unknown --trt-flavour {flavour!r}: choose one of {', '.join(FLAVOUR_CHOICES)}")
        chosen = load_flavour(flavour)
        if not hasattr(chosen.module, "Builder"):
            raise HodorError(f"{chosen.label} is installed without its builder: {INSTALL_HINT}")
        if chosen.name == "tensorrt" and not torch.cuda.is_available():
            raise HodorError(
                "TensorRT builds engines on the GPU that will run them, and this machine has none: "
                "build there, or use --trt-flavour rtx (TensorRT for RTX builds without a GPU)"
            )
        return chosen
    have_gpu = torch.cuda.is_available()
    if have_gpu and _has_builder("tensorrt"):
        return load_flavour("tensorrt")
    if _has_builder("rtx"):
        return load_flavour("rtx")
    if _has_builder("tensorrt"):
        why = "TensorRT is installed but builds only on a GPU, and this machine has none"
    else:
        why = "no TensorRT flavour is installed"
    if mode == "on":
        raise HodorError(f"--tensorrt on: {why}; {INSTALL_HINT}")
    return None


def default_targets(flavour: Flavour) -> tuple[str, ...]:
    """Compute capabilities an engine is built for.

    RTX: every ``SMxy`` of at least 8.0 that the installed release lists. Turing (7.5)
    is left out because TensorRT for RTX builds it only alone and without fp32 matrix
    multiplies. TensorRT: the GPU present.
    """
    if flavour.name == "tensorrt":
        return (GpuInfo.of(torch.device("cuda")).compute_capability,)
    members = flavour.module.ComputeCapability.__members__
    sms = sorted(int(name[2:]) for name in members if name.startswith("SM") and name[2:].isdigit())
    return tuple(f"sm_{sm}" for sm in sms if sm >= 80)


# --------------------------------------------------------------------------- one engine


@dataclass(frozen=True)
class BuildResult:
    """A serialised engine and what building it cost."""

    plan: bytes
    seconds: float


def build_engine(
    flavour: Flavour,
    onnx_path: Path,
    profile: Mapping[str, Sequence[Sequence[int]]],
    targets: Sequence[str],
) -> BuildResult:
    """Parse ``onnx_path`` into a strongly typed network and build it with one optimisation profile.

    ``profile`` maps every network input to its ``[min, opt, max]`` shapes. ``targets``
    (``"sm_86"``) are set as RTX compute capabilities; TensorRT builds for the GPU present.
    Raises ``HodorError`` with TensorRT's own messages when parsing or building fails.
    """
    trt = flavour.module
    log = CapturingLogger(flavour)
    builder = trt.Builder(log)
    # Precision from the graph's types; in TensorRT 11 networks are always strongly typed.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise HodorError(
            f"{flavour.label} {flavour.version} cannot parse {onnx_path.name}: {errors}. "
            "Export without engines (--tensorrt off): the ONNX Runtime backend runs the graphs"
        )

    config = builder.create_builder_config()
    # TF32 (on by default) rounds fp32 matrix products to a 10-bit mantissa: an fp32 engine
    # computes in fp32, as the graphs it is checked against do. fp16 graphs are unaffected.
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        config.clear_flag(tf32)
    if flavour.name == "rtx":
        config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            name = "SM" + target.removeprefix("sm_")
            cc = trt.ComputeCapability.__members__.get(name)
            if cc is None or not config.set_compute_capability(cc, i):
                listed = ", ".join(m for m in trt.ComputeCapability.__members__ if m.startswith("SM"))
                raise HodorError(
                    f"{flavour.label} {flavour.version} cannot target {target} (it lists {listed})"
                )

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if set(inputs) != set(profile):
        raise HodorError(
            f"{onnx_path.name} has inputs {sorted(inputs)} but the manifest's profile covers "
            f"{sorted(profile)}: re-export the ONNX graphs"
        )
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(opt_profile)

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        errors = "; ".join(log.errors[-3:]) or "no reason given"
        raise HodorError(f"{flavour.label} {flavour.version} failed to build {onnx_path.name}: {errors}")
    return BuildResult(plan=bytes(memoryview(plan)), seconds=seconds)


# --------------------------------------------------------------------------- the export hook


def _previous_record(directory: Path | None) -> TensorRTRecord | None:
    """The ``tensorrt`` record of an earlier export in ``directory``, if it has a readable one.

    Read from the raw JSON: an earlier export by another version is still a cache to
    compare against (its entries simply will not match).
    """
    if directory is None:
        return None
    try:
        section = json.loads((directory / MANIFEST_NAME).read_text()).get("tensorrt")
        return TensorRTRecord.from_dict(section) if section else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, HodorError):
        # Including a record naming files outside its directory: never read, rebuilt instead.
        return None


def _why_rebuild(
    previous: TensorRTRecord | None,
    previous_dir: Path | None,
    stage: str,
    wanted: TensorRTRecord,
    onnx_sha256: str,
    profile: dict[str, list[list[int]]],
) -> str | None:
    """``None`` when the previous engine for ``stage`` can be reused, else the reason to rebuild."""
    if previous is None or previous_dir is None:
        return "no engine built before"
    if previous.flavour != wanted.flavour:
        return f"built by {FLAVOUR_LABELS[previous.flavour]} before"
    if previous.version != wanted.version:
        return f"built by version {previous.version} before, this is {wanted.version}"
    if previous.precision != wanted.precision:
        return f"built for {previous.precision} before"
    if tuple(previous.targets) != tuple(wanted.targets) or previous.gpu != wanted.gpu:
        before = previous.gpu or ", ".join(previous.targets)
        return f"built for {before} before"
    entry = previous.engines.get(stage)
    if entry is None:
        return "no engine built before"
    if entry.onnx_sha256 != onnx_sha256:
        return "the ONNX graph changed"
    if entry.profile != profile:
        return "the limits (optimisation profile) changed"
    path = previous_dir / entry.file
    if not path.is_file():
        return f"{entry.file} is missing"
    if sha256_file(path) != entry.engine_sha256:
        return f"{entry.file} was changed or damaged"
    return None


def _profile_lists(entry: GraphEntry) -> dict[str, list[list[int]]]:
    """The manifest's profile as JSON-shaped lists (how the record stores and compares it)."""
    return {name: [list(map(int, shape)) for shape in shapes] for name, shapes in entry.profile.items()}


def build_engines(
    export_dir: Path,
    manifest: Manifest,
    flavour: str | None = None,
    mode: str = "auto",
    *,
    previous_dir: Path | None = None,
    targets: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
) -> TensorRTRecord | None:
    """Build (or reuse) one engine per stage of the export in ``export_dir``; the hook of ``hodor-export``.

    ``manifest`` describes the ONNX graphs already written in ``export_dir``; engines are
    built from its ``precision`` graphs with its per-input optimisation profiles.
    ``flavour`` is ``--trt-flavour`` (``tensorrt``, ``rtx``, or ``None`` to choose) and
    ``mode`` is ``--tensorrt`` (``auto``, ``on``, ``off``). ``previous_dir`` holds an earlier
    export (its ``manifest.json`` with a ``tensorrt`` section, and the engines it lists)
    whose engines are reused when nothing they depend on changed; default ``export_dir``
    itself. Reused engines are copied into ``export_dir`` unless already linked there.
    ``targets`` overrides the compute capabilities (``"sm_86"``, RTX only).

    Returns the manifest's ``tensorrt`` section, or ``None`` when no engines were built
    (``off``, or ``auto`` with no usable flavour). Engines are written whole or not at all
    (temporary name, then rename): an interrupted build leaves no engine that looks complete.
    """
    if progress is None:
        progress = _print_progress
    export_dir = Path(export_dir)
    chosen = resolve_flavour(flavour, mode)
    if chosen is None:
        if mode == "auto":
            progress(
                "tensorrt: no TensorRT flavour can build here; engines skipped (ONNX Runtime runs the export)"
            )
        return None
    if targets is not None and chosen.name == "tensorrt":
        raise HodorError("TensorRT builds for the GPU present; explicit targets need --trt-flavour rtx")
    gpu = GpuInfo.of(torch.device("cuda")) if chosen.name == "tensorrt" else None
    precision = manifest.precision
    wanted = TensorRTRecord(
        flavour=chosen.name,
        version=chosen.version,
        precision=precision,
        targets=tuple(targets) if targets is not None else default_targets(chosen),
        gpu=gpu.name if gpu is not None else None,
    )
    previous_dir = Path(previous_dir) if previous_dir is not None else export_dir
    previous = _previous_record(previous_dir)
    where = wanted.gpu or ", ".join(wanted.targets)

    engines: dict[str, EngineEntry] = {}
    for stage in STAGES:
        graph = manifest.graph(stage, precision)
        onnx_path = verify_graph(export_dir, graph)
        onnx_sha256 = graph.sha256
        profile = _profile_lists(graph)
        if not profile:
            raise HodorError(f"the manifest gives no optimisation profile for {graph.file}: re-export")
        name = engine_filename(stage, precision)
        target_path = export_dir / name
        why = _why_rebuild(previous, previous_dir, stage, wanted, onnx_sha256, profile)
        if why is None and previous is not None:
            old = previous.engines[stage]
            source = previous_dir / old.file
            # hodor-export may already have linked the earlier export's files into the new one.
            if not (target_path.exists() and os.path.samefile(source, target_path)):
                with atomic_write(target_path) as tmp:
                    shutil.copyfile(source, tmp)
            progress(f"tensorrt: {stage}: reusing {name} (unchanged)")
            engines[stage] = old
            continue
        progress(
            f"tensorrt: {stage}: building {name} with {chosen.label} {chosen.version} for {where} ({why})"
        )
        result = build_engine(chosen, onnx_path, profile, wanted.targets)
        with atomic_write(target_path) as tmp:
            tmp.write_bytes(result.plan)
        engines[stage] = EngineEntry(
            file=name,
            onnx=graph.file,
            onnx_sha256=onnx_sha256,
            engine_sha256=sha256_file(target_path),
            profile=profile,
            build_seconds=round(result.seconds, 3),  # as manifest.json keeps it
        )
        check = check_engine_header(chosen, target_path, wanted, gpu)
        if not check.ok:
            raise RuntimeError(f"{chosen.label} wrote an engine it does not accept: {check.problem}")
        size_mb = target_path.stat().st_size / 2**20
        progress(f"tensorrt: {stage}: built {name} in {result.seconds:.1f} s ({size_mb:.1f} MB)")

    return replace(wanted, engines=engines)
