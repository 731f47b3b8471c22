"""TensorRT backend: runs the three stage engines that ``hodor-export --tensorrt`` built.

Two flavours sit behind one adapter (docs/design.md, "Stages"):

- ``tensorrt`` (module ``tensorrt``): data-centre GPUs. An engine runs only on the GPU
  model and TensorRT version it was built with, so it is built on that GPU.
- ``rtx`` (module ``tensorrt_rtx``, "TensorRT for RTX"): builds ahead of time for a
  list of compute capabilities, with no GPU present, and compiles its kernels just in
  time on first use; a runtime cache keeps those kernels between runs.

This module is the runtime half and needs neither ONNX nor the exporter; the build
half (``hodor.export.tensorrt_build``) imports the manifest record defined here.

Device memory and streams belong to PyTorch: inputs and outputs are CUDA tensors bound
by address, and engines run on the current torch stream.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from hodor.config import HodorConfig
from hodor.engine.backends.base import ConfigOverrides
from hodor.engine.backends.manifest import STAGES, Manifest, load_manifest
from hodor.errors import HodorError

logger = logging.getLogger(__name__)

#: Flavour name (``--trt-flavour``) -> Python module.
FLAVOUR_MODULES: dict[str, str] = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}
FLAVOUR_LABELS: dict[str, str] = {"tensorrt": "TensorRT", "rtx": "TensorRT for RTX"}
INSTALL_HINT = (
    "install one: pip install 'hodor-engine[tensorrt]' (TensorRT: data-centre GPUs, builds on the GPU) "
    "or pip install 'hodor-engine[tensorrt-rtx]' (TensorRT for RTX: Ampere and newer RTX GPUs, "
    "builds without a GPU)"
)
#: Version of the ``tensorrt`` section of ``manifest.json``.
RECORD_VERSION = 1

# TensorRT data types by enum name: the two flavours have distinct enum classes.
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


# --------------------------------------------------------------------------- flavours


@dataclass(frozen=True)
class Flavour:
    """An importable TensorRT flavour: ``name`` is ``tensorrt`` or ``rtx``."""

    name: str
    module: ModuleType
    version: str

    @property
    def label(self) -> str:
        return FLAVOUR_LABELS[self.name]


def _import_flavour(name: str) -> ModuleType | None:
    """The flavour's module, or ``None`` when it is not installed or unusable.

    A broken install (missing shared libraries) raises ``OSError``; PyPI's download
    stubs import but carry no ``Runtime``: both count as not installed.
    """
    try:
        module = importlib.import_module(FLAVOUR_MODULES[name])
    except (ImportError, OSError):
        return None
    if not hasattr(module, "Runtime"):
        return None
    return module


def installed_flavours() -> list[str]:
    """Names of the flavours that import here, ``tensorrt`` first."""
    return [name for name in FLAVOUR_MODULES if _import_flavour(name) is not None]


def load_flavour(name: str) -> Flavour:
    """Import flavour ``name``; ``HodorError`` saying how to install it when that fails."""
    if name not in FLAVOUR_MODULES:
        raise HodorError(f"unknown TensorRT flavour {name!r}: choose one of {', '.join(FLAVOUR_MODULES)}")
    module = _import_flavour(name)
    if module is None:
        raise HodorError(
            f"{FLAVOUR_LABELS[name]} (module {FLAVOUR_MODULES[name]}) is not installed: {INSTALL_HINT}"
        )
    return Flavour(name=name, module=module, version=str(module.__version__))


class CapturingLogger:
    """Builds a TensorRT ``ILogger`` that keeps errors for messages and forwards the rest.

    TensorRT reports why a parse, build or deserialisation failed only through its
    logger, so the text is kept to put into the ``HodorError`` a user sees.
    """

    def __new__(cls, flavour: Flavour, quiet: tuple[str, ...] = ()) -> Any:
        trt = flavour.module

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.quiet = quiet

            def log(self, severity: Any, msg: str) -> None:
                if any(q in msg for q in self.quiet):
                    return
                sev = trt.ILogger.Severity
                # Errors reach the user inside the HodorError that follows them; logged only
                # at INFO so that a command line still fails with one line.
                if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                    self.errors.append(msg)
                    logger.info("%s: %s", flavour.label, msg)
                elif severity == sev.WARNING:
                    logger.info("%s: %s", flavour.label, msg)
                else:
                    logger.debug("%s: %s", flavour.label, msg)

        return _Logger()


# --------------------------------------------------------------------------- manifest record


@dataclass(frozen=True)
class EngineEntry:
    """One stage's engine file and what it was built from.

    ``profile`` maps each input name to ``[min, opt, max]`` shapes.
    """

    file: str
    onnx: str
    onnx_sha256: str
    engine_sha256: str
    profile: dict[str, list[list[int]]]
    build_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "onnx": self.onnx,
            "onnx_sha256": self.onnx_sha256,
            "engine_sha256": self.engine_sha256,
            "profile": self.profile,
            "build_seconds": round(self.build_seconds, 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineEntry:
        return cls(
            file=d["file"],
            onnx=d["onnx"],
            onnx_sha256=d["onnx_sha256"],
            engine_sha256=d["engine_sha256"],
            profile={k: [list(map(int, s)) for s in v] for k, v in d["profile"].items()},
            build_seconds=float(d.get("build_seconds", 0.0)),
        )


@dataclass(frozen=True)
class TensorRTRecord:
    """The ``tensorrt`` section of ``manifest.json``: how the engines were built.

    ``targets`` are compute capabilities (``"sm_86"``): for ``rtx`` the ahead-of-time
    targets, for ``tensorrt`` the one of the GPU named by ``gpu`` that built them.
    """

    flavour: str
    version: str
    precision: str
    targets: tuple[str, ...]
    gpu: str | None
    engines: dict[str, EngineEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_version": RECORD_VERSION,
            "flavour": self.flavour,
            "version": self.version,
            "precision": self.precision,
            "targets": list(self.targets),
            "gpu": self.gpu,
            "engines": {stage: entry.to_dict() for stage, entry in self.engines.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorRTRecord:
        if d.get("record_version") != RECORD_VERSION:
            raise HodorError(
                f"the manifest's tensorrt section has version {d.get('record_version')!r}, this program "
                f"reads version {RECORD_VERSION}: re-export with hodor-export --tensorrt on"
            )
        return cls(
            flavour=d["flavour"],
            version=d["version"],
            precision=d["precision"],
            targets=tuple(d["targets"]),
            gpu=d.get("gpu"),
            engines={stage: EngineEntry.from_dict(e) for stage, e in d["engines"].items()},
        )


# --------------------------------------------------------------------------- validity


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device an engine would run on."""

    name: str
    compute_capability: str  # "sm_86"

    @classmethod
    def of(cls, device: torch.device) -> GpuInfo:
        major, minor = torch.cuda.get_device_capability(device)
        return cls(name=torch.cuda.get_device_name(device), compute_capability=f"sm_{major}{minor}")


@dataclass(frozen=True)
class EngineCheck:
    """Verdict on one engine file. ``problem`` is a sentence when it cannot run here."""

    ok: bool
    problem: str | None = None
    suboptimal: bool = False


_DIAGNOSTIC_WORDS = {
    "VERSION_MISMATCH": "it was built by another version",
    "UNSUPPORTED_CC": "this GPU's compute capability is not among its targets",
    "OLD_CUDA_DRIVER": "the NVIDIA driver is too old (update it)",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "the GPU has too little memory for it",
    "MALFORMED_ENGINE": "the file is damaged or not an engine",
    "CUDA_ERROR": "CUDA reported an error while checking it",
}


def header_diagnostics(flavour: Flavour, diagnostics: int) -> list[str]:
    """Names of the bits set in an ``EngineInvalidityDiagnostics`` mask."""
    members = flavour.module.EngineInvalidityDiagnostics.__members__
    return [name for name, bit in members.items() if diagnostics & int(bit)]


def check_engine_header(
    flavour: Flavour, path: Path, record: TensorRTRecord, gpu: GpuInfo | None
) -> EngineCheck:
    """Whether the engine at ``path`` fits this machine, judged before deserialising it.

    With no GPU (``gpu is None``) only the file's form can be judged: TensorRT for RTX's
    header check still tells a malformed file, but whether it fits a GPU needs one.
    """
    if not path.is_file():
        return EngineCheck(False, f"{path.name} is missing")
    if record.flavour != flavour.name:
        return EngineCheck(False, f"{path.name} was built by {FLAVOUR_LABELS[record.flavour]}")
    if flavour.name == "tensorrt":
        # No header API: a plan runs only with the same TensorRT version on the same GPU model.
        if record.version != flavour.version:
            return EngineCheck(
                False,
                f"{path.name} was built by TensorRT {record.version}, this is TensorRT {flavour.version}",
            )
        if gpu is not None and gpu.compute_capability not in record.targets:
            return EngineCheck(
                False,
                f"{path.name} was built on {record.gpu} ({', '.join(record.targets)}), "
                f"this GPU is {gpu.name} ({gpu.compute_capability})",
            )
        return EngineCheck(True)

    trt = flavour.module
    runtime = trt.Runtime(CapturingLogger(flavour, quiet=("Error reading CUDA GPU properties",)))
    with open(path, "rb") as f:
        header = f.read(int(runtime.engine_header_size))
    validity, diagnostics = runtime.get_engine_validity(header)
    names = header_diagnostics(flavour, int(diagnostics))
    if "MALFORMED_ENGINE" in names:
        return EngineCheck(False, f"{path.name}: {_DIAGNOSTIC_WORDS['MALFORMED_ENGINE']}")
    if gpu is None:
        # Without a CUDA device the header check reports INVALID with no reason set.
        return EngineCheck(True)
    if validity == trt.EngineValidity.INVALID:
        reasons = "; ".join(_DIAGNOSTIC_WORDS.get(n, n.lower()) for n in names) or "no reason given"
        return EngineCheck(
            False,
            f"{path.name} (TensorRT for RTX {record.version}, targets {', '.join(record.targets)}) does not "
            f"fit {gpu.name} ({gpu.compute_capability}) with TensorRT for RTX {flavour.version}: {reasons}",
        )
    return EngineCheck(True, suboptimal=validity == trt.EngineValidity.SUBOPTIMAL)


def read_record(manifest: Manifest) -> TensorRTRecord | None:
    """The manifest's ``tensorrt`` section, or ``None`` when the export has no engines."""
    return TensorRTRecord.from_dict(manifest.tensorrt) if manifest.tensorrt else None


def probe_engines(export_dir: Path, manifest: Manifest, device: torch.device | None = None) -> str | None:
    """``None`` when this export's engines can run here, else a sentence saying why not.

    Cheap (imports the flavour and reads engine headers, deserialises nothing): for
    ``--backend auto`` to decide between TensorRT and ONNX Runtime.
    """
    record = read_record(manifest)
    if record is None:
        return "the export has no TensorRT engines (hodor-export --tensorrt on builds them)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    try:
        flavour = load_flavour(record.flavour)
    except HodorError as e:
        return str(e)
    device = device or torch.device("cuda")
    gpu = GpuInfo.of(device)
    with torch.cuda.device(device):  # the header check judges the current device
        for stage in STAGES:
            entry = record.engines.get(stage)
            if entry is None:
                return f"the manifest lists no {stage} engine"
            verdict = check_engine_header(flavour, Path(export_dir) / entry.file, record, gpu)
            if not verdict.ok:
                return verdict.problem
    return None


# --------------------------------------------------------------------------- runtime


class _LruCache(OrderedDict):
    """A dict that forgets its least recently used entry beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


@dataclass
class _CapturedGraph:
    """A CUDA graph of one engine call at fixed shapes, with the buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class StageEngine:
    """One deserialised engine, its execution context, and its output buffers.

    ``__call__`` takes CUDA tensors by input name and returns the outputs in engine
    order. With ``reuse_outputs`` the outputs are buffers kept per input shapes and
    overwritten by the next call with the same shapes; without, every call returns
    tensors of its own (allocated from torch's caching allocator).

    CUDA graphs: TensorRT for RTX captures them itself (its whole-graph strategy, per
    shape, after the shape-specialised kernels are compiled). With TensorRT the second
    call at a given set of shapes is captured into a torch CUDA graph and later calls at
    those shapes copy their inputs in and replay it.
    """

    #: Distinct input-shape sets whose buffers and graphs are kept.
    CACHE_SHAPES = 8

    def __init__(
        self,
        flavour: Flavour,
        engine: Any,
        name: str,
        device: torch.device,
        *,
        runtime_cache: Any = None,
        cuda_graphs: bool = True,
        reuse_outputs: bool = True,
    ) -> None:
        trt = flavour.module
        self.flavour = flavour
        self.name = name
        self.device = device
        self.engine = engine
        self.reuse_outputs = reuse_outputs
        if flavour.name == "rtx":
            config = engine.create_runtime_config()
            if runtime_cache is not None:
                config.set_runtime_cache(runtime_cache)
            if cuda_graphs:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.runtime_config = config
            self.context = engine.create_execution_context(config)
        else:
            self.runtime_config = None
            self.context = engine.create_execution_context()
        if self.context is None:
            raise HodorError(f"{flavour.label} could not create an execution context for {name}")
        self._manual_graphs = cuda_graphs and flavour.name == "tensorrt"

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: _TORCH_DTYPES[engine.get_tensor_dtype(n).name] for n in names}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._outputs = _LruCache(self.CACHE_SHAPES)
        self._graphs = _LruCache(self.CACHE_SHAPES)
        self._calls: dict[tuple, int] = {}
        self._not_capturable: set[tuple] = set()
        self._private_stream: torch.cuda.Stream | None = None

    def profile(self, name: str) -> list[tuple[int, ...]]:
        """``[min, opt, max]`` shapes of input ``name`` (profile 0)."""
        return [tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0)]

    def _stream(self) -> tuple[torch.cuda.Stream, torch.cuda.Stream | None]:
        """The stream to run on, and the caller's stream to order with when they differ.

        TensorRT synchronises the whole device when handed the legacy default stream
        (handle 0), and nothing can be captured there; so in that case a private stream is
        used, ordered after the caller's work and before whatever the caller does next.
        """
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream != 0:
            return current, None
        if self._private_stream is None:
            self._private_stream = torch.cuda.Stream(self.device)
        return self._private_stream, current

    def _prepare(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if set(inputs) != set(self.input_names):
            raise ValueError(f"{self.name}: expected inputs {self.input_names}, got {sorted(inputs)}")
        ready = []
        for name in self.input_names:
            t = inputs[name]
            if t.device.type != "cuda":
                raise ValueError(f"{self.name}: input {name} is on {t.device}; engines take CUDA tensors")
            ready.append(t.to(device=self.device, dtype=self.dtypes[name]).contiguous())
        return ready

    def _set_shapes(self, tensors: list[torch.Tensor]) -> None:
        for name, t in zip(self.input_names, tensors, strict=True):
            shape = tuple(t.shape)
            # Only on change: a new shape makes the context re-plan before its next run.
            if self._shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise ValueError(
                        f"{self.name}: {name} of shape {shape} is outside the engine's profile "
                        f"(min, opt, max) {self.profile(name)}"
                    )
                self._shapes[name] = shape

    def _new_outputs(self) -> list[torch.Tensor]:
        buffers = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.name}: output {name} has unresolved shape {shape}")
            buffers.append(torch.empty(shape, dtype=self.dtypes[name], device=self.device))
        return buffers

    def _bind(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        for name, t in zip(self.input_names + self.output_names, inputs + outputs, strict=True):
            self.context.set_tensor_address(name, t.data_ptr())

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        stream, caller = self._stream()
        if caller is not None:
            stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            tensors = self._prepare(inputs)
            key = tuple(tuple(t.shape) for t in tensors)
            graphed = self._graphs.get_fresh(key) if self._manual_graphs else None
            if graphed is not None:
                for static, t in zip(graphed.inputs, tensors, strict=True):
                    static.copy_(t)
                graphed.graph.replay()
                outputs = graphed.outputs if self.reuse_outputs else [t.clone() for t in graphed.outputs]
            else:
                self._set_shapes(tensors)
                outputs = self._outputs.get_fresh(key) if self.reuse_outputs else None
                if outputs is None:
                    outputs = self._new_outputs()
                    if self.reuse_outputs:
                        self._outputs.put(key, outputs)
                self._bind(tensors, outputs)
                if not self.context.execute_async_v3(stream.cuda_stream):
                    raise RuntimeError(f"{self.name}: {self.flavour.label} could not run the engine")
                if self._manual_graphs:
                    self._maybe_capture(key, tensors, stream)
        if caller is not None:
            caller.wait_stream(stream)
        return outputs

    def _maybe_capture(self, key: tuple, tensors: list[torch.Tensor], stream: torch.cuda.Stream) -> None:
        """Capture a CUDA graph for ``key`` once those shapes come back (the second call).

        A shape seen once is not worth a capture; a repeating one saves every layer's
        launch overhead. The graph reads its own copies of the inputs and writes its own
        outputs, so later calls copy in and replay.
        """
        if key in self._not_capturable:
            return
        self._calls[key] = self._calls.get(key, 0) + 1
        if self._calls[key] < 2:
            return
        capturable = getattr(self.context, "is_stream_capturable", None)
        capture_stream = torch.cuda.Stream(self.device)
        if capturable is not None and not capturable(capture_stream.cuda_stream):
            self._not_capturable.add(key)
            return
        static_inputs = [t.clone() for t in tensors]
        static_outputs = self._new_outputs()
        self._bind(static_inputs, static_outputs)
        # The run just made already applied these shapes, as TensorRT needs before a capture.
        graph = torch.cuda.CUDAGraph()
        capture_stream.wait_stream(stream)
        try:
            with torch.cuda.graph(graph, stream=capture_stream):
                ok = self.context.execute_async_v3(capture_stream.cuda_stream)
        except RuntimeError as e:
            ok = False
            logger.info("%s: CUDA graph capture failed (%s); running without one", self.name, e)
        stream.wait_stream(capture_stream)
        if not ok:
            self._not_capturable.add(key)
            return
        self._graphs.put(key, _CapturedGraph(graph=graph, inputs=static_inputs, outputs=static_outputs))


class TensorRTBackend:
    """The seam (``hodor.engine.backends.base.Backend``) on the TensorRT engines of an export.

    Inputs are CUDA tensors, cast to each engine's input types; outputs come back in the
    engine's types (float32: every graph casts at its edges). Output lifetimes: the
    decoder's logits are a buffer reused by the next decode call at the same shapes (the
    session consumes them at once); backbone features and descriptors are fresh tensors,
    because the session holds a chunk's features across calls and the descriptor ring
    keeps views of the encoder's output.
    """

    name = "tensorrt"

    def __init__(
        self,
        export_dir: Path,
        manifest: Manifest,
        device: torch.device | str | None = None,
        *,
        config: HodorConfig | None = None,
        cuda_graphs: bool = True,
        runtime_cache: bool = True,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.device = torch.device(device or "cuda")
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise HodorError(
                "the tensorrt backend needs an NVIDIA GPU (--device cuda): use --backend onnxruntime here"
            )
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        record = read_record(manifest)
        if record is None:
            raise HodorError(
                f"{self.export_dir} has no TensorRT engines: re-export with hodor-export CKPT --tensorrt on, "
                "or use --backend onnxruntime"
            )
        self.record = record
        self.manifest = manifest
        self.config = config or manifest.hodor_config
        self.flavour = load_flavour(record.flavour)
        self.gpu = GpuInfo.of(self.device)

        with torch.cuda.device(self.device):
            # TensorRT works in the current CUDA context (the runtime cache refuses to load
            # without one): make sure torch has created the device's primary context.
            torch.zeros(1, device=self.device)
            self._log = CapturingLogger(self.flavour)
            self._runtime = self.flavour.module.Runtime(self._log)
            engines = {stage: self._deserialize(stage) for stage in STAGES}
            self._cache = None
            self._cache_path: Path | None = None
            if runtime_cache and self.flavour.name == "rtx":
                # One cache for the three engines; the GPU in its name keeps machines that
                # share an export directory from overwriting each other's kernels.
                self._cache_path = self.export_dir / f"runtime-cache.{self.gpu.compute_capability}.bin"
                self._cache = engines[STAGES[0]].create_runtime_config().create_runtime_cache()
                if self._cache_path.is_file() and not self._cache.deserialize(self._cache_path.read_bytes()):
                    logger.info("%s does not fit this GPU or driver; starting afresh", self._cache_path.name)
            self.stages = {
                stage: StageEngine(
                    self.flavour,
                    engine,
                    record.engines[stage].file,
                    self.device,
                    runtime_cache=self._cache,
                    cuda_graphs=cuda_graphs,
                    reuse_outputs=stage == "decoder",
                )
                for stage, engine in engines.items()
            }
        self._finalizer = None
        if self._cache is not None and self._cache_path is not None:
            # Kernels compiled just in time during this run are kept for the next one.
            self._finalizer = weakref.finalize(self, _save_runtime_cache, self._cache, self._cache_path)

    def _deserialize(self, stage: str) -> Any:
        """Check that the engine file fits this GPU and version (clear message), then load it."""
        entry = self.record.engines.get(stage)
        if entry is None:
            raise HodorError(f"{self.export_dir}/manifest.json lists no {stage} engine: re-export")
        path = self.export_dir / entry.file
        verdict = check_engine_header(self.flavour, path, self.record, self.gpu)
        if not verdict.ok:
            raise HodorError(
                f"{verdict.problem}. Re-export with hodor-export CKPT --tensorrt on (on or for this GPU), "
                "or use --backend onnxruntime"
            )
        if verdict.suboptimal:
            logger.warning("%s runs on %s but may be slow: re-export for this GPU", path.name, self.gpu.name)
        self._log.errors.clear()
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            why = "; ".join(self._log.errors[-3:]) or "no reason given"
            raise HodorError(
                f"{self.flavour.label} {self.flavour.version} could not load {path}: {why}. "
                "Re-export with hodor-export CKPT --tensorrt on, or use --backend onnxruntime"
            )
        return engine

    def close(self) -> None:
        """Save the runtime cache (TensorRT for RTX) now rather than at exit."""
        if self._finalizer is not None:
            self._finalizer()

    # ---------------------------------------------------------------- the seam

    def check_limits(self, num_objects: int, history: int, height: int, width: int) -> None:
        """``height``, ``width``: the padded frame. The engines' profiles span the manifest's limits."""
        self.manifest.limits.check(num_objects, history, height, width)

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` -> ``f4 [B,256,H/4,W/4]``, ``f8 [B,256,H/8,W/8]``.

        A batch larger than the engine's profile runs in pieces: a frame's features do not
        depend on the others in its batch.
        """
        engine = self.stages["backbone"]
        step = self.manifest.limits.max_batch
        pieces = [
            self._named(engine, engine(images=images[i : i + step]), ("f4", "f8"))
            for i in range(0, images.shape[0], step)
        ]
        if len(pieces) == 1:
            return pieces[0][0], pieces[0][1]
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])

    def encode(
        self, f8: torch.Tensor, fg_masks: torch.Tensor, bg_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        engine = self.stages["encoder"]
        outputs = engine(f8=f8, fg_masks=fg_masks, bg_masks=bg_masks)
        fg_desc, bg_desc = self._named(engine, outputs, ("fg_desc", "bg_desc"))
        return fg_desc, bg_desc

    def decode(
        self,
        f4: torch.Tensor,
        f8: torch.Tensor,
        fg_hist: torch.Tensor,
        bg_hist: torch.Tensor,
        fg_invalid: torch.Tensor,
        bg_invalid: torch.Tensor,
    ) -> torch.Tensor:
        engine = self.stages["decoder"]
        outputs = engine(
            f4=f4, f8=f8, fg_hist=fg_hist, bg_hist=bg_hist, fg_invalid=fg_invalid, bg_invalid=bg_invalid
        )
        (logits,) = self._named(engine, outputs, ("logits",))
        return logits

    @staticmethod
    def _named(
        engine: StageEngine, outputs: list[torch.Tensor], names: tuple[str, ...]
    ) -> list[torch.Tensor]:
        """The outputs in the seam's order, whatever order the engine lists them in."""
        by_name = dict(zip(engine.output_names, outputs, strict=True))
        return [by_name[n] for n in names]


def open_tensorrt_backend(
    export_dir: Path, device: str | None, overrides: ConfigOverrides | None = None
) -> TensorRTBackend:
    """``hodor.engine.backends.base.ExportOpener`` for ``tensorrt``: raises ``HodorError`` when the
    export's engines cannot run here (so ``--backend auto`` falls back to ONNX Runtime)."""
    manifest = load_manifest(export_dir)
    config = overrides.apply(manifest.hodor_config) if overrides is not None else None
    if device not in (None, "cuda") and not str(device).startswith("cuda"):
        raise HodorError(f"the tensorrt backend runs on a GPU, not on --device {device}")
    return TensorRTBackend(Path(export_dir), manifest, device, config=config)


def _save_runtime_cache(cache: Any, path: Path) -> None:
    """Write the runtime cache atomically; an unwritable export directory only costs a warning."""
    try:
        blob = bytes(memoryview(cache.serialize()))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not save the TensorRT runtime cache to %s: %s", path, e)
